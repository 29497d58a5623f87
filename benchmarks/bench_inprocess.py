"""In-process cost per request: tenantkit's full stack against bare apps and other limiters.

    python -m benchmarks.bench_inprocess [--rounds 7] [--number 5000] [--no-redis]

ASGI: bare Starlette; a minimal pure-ASGI middleware around ``limits`` (the
floor any limiter pays); the full stack's work hand-inlined in one function
(``benchmarks._floor``, the floor for these features); slowapi's middleware
with one limit; tenantkit's full stack (identity by header or API key, tenant
cache, policy on the JSON body, request and token quotas, token settle,
rate-limit headers) on the memory backend. WSGI: the same with bare Flask,
Flask-Limiter and tenantkit's WSGI middleware. Then the Redis variants, with
round trips and server-side Redis commands per request counted. Every figure
is the best of interleaved rounds; ratios are against the bare app of the same
run.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Callable
from typing import Any

from benchmarks._harness import (
    BIG,
    CLIENT,
    RoundTrips,
    asgi_caller,
    flask_app,
    make_kit,
    overhead_rows,
    private_redis,
    server_commands,
    starlette_app,
    table,
    time_contenders,
    wsgi_caller,
)

TARGET_OVERHEAD_US = 5.0
COLUMNS = ["app", "best µs/req", "median µs/req", "overhead µs", "vs bare"]
CPU_NOTE = "(CPU µs of this process per request, best and median of the rounds)"
WALL_NOTE = "(wall µs per request, Redis waits included, best and median of the rounds)"


def limits_floor(app: Any) -> Any:
    """A pure-ASGI middleware doing one ``limits`` hit per request (no headers, no body)."""
    from limits import parse
    from limits.storage import MemoryStorage
    from limits.strategies import FixedWindowRateLimiter

    limiter = FixedWindowRateLimiter(MemoryStorage())
    item = parse(f"{BIG}/minute")

    async def middleware(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http" and not limiter.hit(item, scope["client"][0]):
            raise RuntimeError("unexpected limit")
        await app(scope, receive, send)

    return middleware


def slowapi_app(kind: str, storage_uri: str = "memory://") -> Any:
    from slowapi import Limiter
    from slowapi.middleware import SlowAPIASGIMiddleware, SlowAPIMiddleware
    from slowapi.util import get_remote_address

    app = starlette_app()
    app.state.limiter = Limiter(
        key_func=get_remote_address,
        default_limits=[f"{BIG}/minute"],
        storage_uri=storage_uri,
        headers_enabled=True,
    )
    app.add_middleware(SlowAPIMiddleware if kind == "base" else SlowAPIASGIMiddleware)
    return app


def tenantkit_asgi(
    identity: str, storage_uri: str = "memory://", prefix: str = "bench", report: bool = True
) -> Any:
    from tenantkit.asgi import TenantKitMiddleware

    built = make_kit(identity, storage_uri, prefix)
    return TenantKitMiddleware(starlette_app(report), built.kit), built.headers, built.kit


def floor_app() -> tuple[Any, dict[str, str]]:
    """The hand-inlined full stack (``benchmarks._floor``) for the kit's tenant ``acme``."""
    from benchmarks._floor import floor_middleware

    built = make_kit("header")
    return floor_middleware(starlette_app(), built.kit.tenants.get("acme")), built.headers


def flask_limiter_app(storage_uri: str = "memory://") -> Any:
    from flask_limiter import Limiter
    from flask_limiter.util import get_remote_address

    app = flask_app()
    Limiter(
        get_remote_address,
        app=app,
        default_limits=[f"{BIG} per minute"],
        storage_uri=storage_uri,
        headers_enabled=True,
    )
    return app


def tenantkit_wsgi(
    identity: str, storage_uri: str = "memory://", prefix: str = "bench", report: bool = True
) -> Any:
    from tenantkit.wsgi import TenantKitWSGIMiddleware

    built = make_kit(identity, storage_uri, prefix)
    app = flask_app(report)
    app.wsgi_app = TenantKitWSGIMiddleware(app.wsgi_app, built.kit)  # type: ignore[method-assign]
    return app, built.headers, built.kit


def asgi_memory(rounds: int, number: int) -> tuple[str, tuple[float, float]]:
    tk_header, header_h, _ = tenantkit_asgi("header")
    tk_key, key_h, _ = tenantkit_asgi("api_key")
    floor, floor_h = floor_app()
    contenders = {
        "bare Starlette": asgi_caller(starlette_app(), {}),
        "pure-ASGI limits hit (1 limit)": asgi_caller(limits_floor(starlette_app()), {}),
        "hand-inlined full stack (the floor)": asgi_caller(floor, floor_h),
        "slowapi SlowAPIMiddleware (1 limit)": asgi_caller(slowapi_app("base"), {}),
        "slowapi SlowAPIASGIMiddleware (1 limit)": asgi_caller(slowapi_app("asgi"), {}),
        "tenantkit full stack, header identity": asgi_caller(tk_header, header_h),
        "tenantkit full stack, API key": asgi_caller(tk_key, key_h),
    }
    timings = time_contenders(contenders, rounds=rounds, number=number, is_async=True)
    bare = timings[0].best("cpu")
    worst = max(t.best("cpu") for t in timings if t.name.startswith("tenantkit"))
    floor_added = next(t.best("cpu") for t in timings if t.name.startswith("hand-inlined")) - bare
    return table(
        f"ASGI in process, memory backend {CPU_NOTE}",
        COLUMNS,
        overhead_rows(timings, "bare Starlette", "cpu"),
    ), (worst - bare, floor_added)


def wsgi_memory(rounds: int, number: int) -> str:
    tk_header, header_h, _ = tenantkit_wsgi("header")
    tk_key, key_h, _ = tenantkit_wsgi("api_key")
    contenders = {
        "bare Flask": wsgi_caller(flask_app(), {}),
        "Flask-Limiter (1 limit)": wsgi_caller(flask_limiter_app(), {}),
        "Flask + tenantkit WSGI, header identity": wsgi_caller(tk_header, header_h),
        "Flask + tenantkit WSGI, API key": wsgi_caller(tk_key, key_h),
    }
    timings = time_contenders(contenders, rounds=rounds, number=number, is_async=False)
    return table(
        f"WSGI in process, memory backend {CPU_NOTE}",
        COLUMNS,
        overhead_rows(timings, "bare Flask", "cpu"),
    )


def count_per_request(
    url: str, call: Callable[[], Any], number: int, is_async: bool
) -> tuple[float, float]:
    """Round trips and server-side commands per request over ``number`` requests."""
    before = server_commands(url)
    with RoundTrips() as trips:
        if is_async:

            async def run() -> None:
                for _ in range(number):
                    await call()

            asyncio.run(run())
        else:
            for _ in range(number):
                call()
    executed = server_commands(url) - before - 1  # the INFO of the first server_commands()
    return trips.count / number, executed / number


def redis_tables(rounds: int, number: int) -> str:
    with private_redis() as url:
        if url is None:
            return "Redis variants skipped: no redis-server and no TENANTKIT_BENCH_REDIS_URL"
        tk_async, async_h, _ = tenantkit_asgi("api_key", url, "bench-asgi")
        tk_quiet, quiet_h, _ = tenantkit_asgi("api_key", url, "bench-asgi-q", report=False)
        tk_sync, sync_h, _ = tenantkit_wsgi("api_key", url, "bench-wsgi")
        tk_sync_quiet, sync_quiet_h, _ = tenantkit_wsgi("api_key", url, "bench-wsgi-q", False)
        asgi = {
            "bare Starlette": asgi_caller(starlette_app(), {}),
            "slowapi SlowAPIMiddleware (1 limit, Redis)": asgi_caller(slowapi_app("base", url), {}),
            "tenantkit full stack, API key (Redis)": asgi_caller(tk_async, async_h),
            "tenantkit, API key (Redis), no token report": asgi_caller(tk_quiet, quiet_h),
        }
        wsgi = {
            "bare Flask": wsgi_caller(flask_app(), {}),
            "Flask-Limiter (1 limit, Redis)": wsgi_caller(flask_limiter_app(url), {}),
            "Flask + tenantkit WSGI, API key (Redis)": wsgi_caller(tk_sync, sync_h),
            "Flask + tenantkit WSGI (Redis), no token report": wsgi_caller(
                tk_sync_quiet, sync_quiet_h
            ),
        }
        number = max(200, number // 5)
        a = time_contenders(asgi, rounds=rounds, number=number, is_async=True)
        w = time_contenders(wsgi, rounds=rounds, number=number, is_async=False)
        count_rows = []
        for contenders, is_async in ((asgi, True), (wsgi, False)):
            for name, call in contenders.items():
                if name.startswith("bare"):
                    continue
                trips, executed = count_per_request(url, call, 500, is_async)
                count_rows.append([name, f"{trips:.2f}", f"{executed:.2f}"])
        return "\n\n".join(
            [
                table(
                    f"ASGI in process, Redis {WALL_NOTE}",
                    COLUMNS,
                    overhead_rows(a, "bare Starlette", "wall"),
                ),
                table(
                    f"WSGI in process, Redis {WALL_NOTE}",
                    COLUMNS,
                    overhead_rows(w, "bare Flask", "wall"),
                ),
                table(
                    "Redis per request. tenantkit: 3 limits (tenant and key requests, tenant "
                    "tokens) in one call to admit; reporting tokens adds one call to settle",
                    ["app", "round trips", "server commands (incl. inside Lua)"],
                    count_rows,
                ),
            ]
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--number", type=int, default=5000)
    parser.add_argument("--no-redis", action="store_true")
    args = parser.parse_args(argv)
    print(f"client address {CLIENT}; {args.rounds} rounds x {args.number} requests\n")
    asgi_text, (overhead, floor_added) = asgi_memory(args.rounds, args.number)
    print(asgi_text)
    verdict = "met" if overhead <= TARGET_OVERHEAD_US else "NOT met"
    print(
        f"target: tenantkit adds at most {TARGET_OVERHEAD_US:.0f} µs over bare Starlette: "
        f"{verdict} ({overhead:+.1f} µs, slowest tenantkit row; the hand-inlined floor "
        f"of the same work adds {floor_added:+.1f} µs)\n"
    )
    print(wsgi_memory(args.rounds, args.number))
    if not args.no_redis:
        print()
        print(redis_tables(args.rounds, args.number))
    return 0


if __name__ == "__main__":
    sys.exit(main())
