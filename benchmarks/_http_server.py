"""One uvicorn worker serving one benchmark app: ``python -m benchmarks._http_server APP PORT``.

APP is ``bare``, ``floor`` (``benchmarks._floor``), ``tenantkit-header``,
``tenantkit-api-key`` or ``slowapi``. The identifying headers a client must send
are printed on the first line, as JSON.
"""

from __future__ import annotations

import json
import sys

import uvicorn
from benchmarks._harness import make_kit, starlette_app


def build(kind: str) -> tuple[object, dict[str, str]]:
    if kind == "bare":
        return starlette_app(), {}
    if kind == "floor":
        from benchmarks.bench_inprocess import floor_app

        return floor_app()
    if kind == "slowapi":
        from benchmarks.bench_inprocess import slowapi_app

        return slowapi_app("asgi"), {}
    from tenantkit.asgi import TenantKitMiddleware

    built = make_kit("header" if kind == "tenantkit-header" else "api_key")
    return TenantKitMiddleware(starlette_app(), built.kit), built.headers


def main() -> None:
    kind, port = sys.argv[1], int(sys.argv[2])
    app, headers = build(kind)
    print(json.dumps(headers), flush=True)
    loop = "uvloop" if _has("uvloop") else "asyncio"
    http = "httptools" if _has("httptools") else "h11"
    uvicorn.run(
        app,  # type: ignore[arg-type]
        host="127.0.0.1",
        port=port,
        loop=loop,
        http=http,
        workers=1,
        log_level="warning",
        access_log=False,
    )


def _has(module: str) -> bool:
    try:
        __import__(module)
    except ImportError:
        return False
    return True


if __name__ == "__main__":
    main()
