"""Shared benchmark plumbing: the apps under test, timers, a private Redis, tables.

Every app serves the same route, ``POST /api/chat/completions`` with the same
OpenAI-shaped JSON body, reads the body and answers a small JSON document. The
contenders only differ by what is mounted in front of the handler.
"""

from __future__ import annotations

import asyncio
import gc
import io
import json
import os
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from tests._redis_server import redis_server

PATH = "/api/chat/completions"
BODY = json.dumps(
    {
        "model": "gpt-4o-mini",
        "messages": [{"role": "user", "content": "Summarise the meeting notes, please."}],
        "tools": [{"type": "function", "function": {"name": "search", "parameters": {}}}],
        "max_tokens": 64,
    }
).encode()
# Large enough never to throttle a benchmark, small enough for the 32-bit quota columns.
BIG = 2_000_000
"""Quotas far above what a run can spend: every request is admitted and fully processed."""
CLIENT = "10.1.2.3"


# -- the apps ---------------------------------------------------------------------------


def starlette_app(report_tokens: bool = True) -> Any:
    """Bare Starlette: the handler every ASGI contender wraps."""
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    from tenantkit import context

    async def chat(request: Request) -> JSONResponse:
        await request.body()
        ctx = context.get_context() if report_tokens else None
        if ctx is not None:
            ctx.meter.used = 42  # what report_tokens() does, without its checks
        return JSONResponse({"id": "cmpl-1", "usage": {"total_tokens": 42}})

    return Starlette(routes=[Route(PATH, chat, methods=["POST"])])


def flask_app(report_tokens: bool = True) -> Any:
    """Bare Flask: the handler every WSGI contender wraps."""
    from flask import Flask, jsonify, request

    from tenantkit import context

    app = Flask("bench")

    @app.post(PATH)
    def chat() -> Any:
        request.get_data()
        ctx = context.get_context() if report_tokens else None
        if ctx is not None:
            ctx.meter.used = 42
        return jsonify({"id": "cmpl-1", "usage": {"total_tokens": 42}})

    return app


@dataclass
class Kit:
    """A tenantkit kit with tenant ``acme`` and the headers that identify a request to it."""

    kit: Any
    headers: dict[str, str]


def make_kit(identity: str, storage_uri: str = "memory://", key_prefix: str = "bench") -> Kit:
    """Build a kit with request and token quotas and allow-lists (``header`` or ``api_key``)."""
    from tenantkit.kit import TenantKit
    from tenantkit.quotas import QuotaEngine
    from tenantkit.settings import QuotaSettings, Settings

    folder = tempfile.mkdtemp(prefix="tk-bench-")
    quota = QuotaSettings(storage_uri=storage_uri)
    common: dict[str, Any] = {
        "database_url": f"sqlite:///{folder}/bench.db",
        "api_key_secret": "bench-secret-" + "x" * 32,
        "quota": quota,
    }
    if identity == "header":
        settings = Settings(
            resolvers=("header",), trust_tenant_header=True, require_credential=False, **common
        )
    else:
        settings = Settings(resolvers=("api_key",), **common)
    kit = TenantKit(settings, quotas=QuotaEngine(quota, key_prefix=key_prefix))
    kit.create_all()
    kit.tenants.create(
        id="acme",
        name="Acme",
        quota_requests_per_minute=BIG,
        quota_tokens_per_minute=BIG * 1000,
        allowed_models=["gpt-4o-mini", "gpt-4o"],
        allowed_tools=["search", "calculator"],
    )
    if identity == "header":
        return Kit(kit, {"X-Tenant-ID": "acme"})
    issued = kit.api_keys.issue("acme", name="bench", rate_limit=BIG)
    return Kit(kit, {"X-API-Key": issued.key})


# -- in-process drivers -----------------------------------------------------------------


def asgi_caller(app: Any, headers: dict[str, str]) -> Callable[[], Any]:
    """Return a coroutine function serving one request to ``app`` in process."""
    raw = [(k.lower().encode(), v.encode()) for k, v in headers.items()]
    raw += [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(BODY))]
    template = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": PATH,
        "raw_path": PATH.encode(),
        "root_path": "",
        "query_string": b"",
        "headers": raw,
        "client": (CLIENT, 50000),
        "server": ("bench", 80),
    }
    request_message = {"type": "http.request", "body": BODY, "more_body": False}
    status: list[int] = []

    async def receive() -> dict[str, Any]:
        return request_message

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            status.append(message["status"])

    async def call() -> int:
        status.clear()
        await app(dict(template), receive, send)
        return status[0]

    return call


def wsgi_caller(app: Any, headers: dict[str, str]) -> Callable[[], int]:
    """Return a function serving one request to the WSGI ``app`` in process."""
    template = {
        "REQUEST_METHOD": "POST",
        "SCRIPT_NAME": "",
        "PATH_INFO": PATH,
        "QUERY_STRING": "",
        "SERVER_NAME": "bench",
        "SERVER_PORT": "80",
        "SERVER_PROTOCOL": "HTTP/1.1",
        "REMOTE_ADDR": CLIENT,
        "CONTENT_TYPE": "application/json",
        "CONTENT_LENGTH": str(len(BODY)),
        "wsgi.version": (1, 0),
        "wsgi.url_scheme": "http",
        "wsgi.errors": io.StringIO(),
        "wsgi.multithread": False,
        "wsgi.multiprocess": False,
        "wsgi.run_once": False,
    }
    for name, value in headers.items():
        template["HTTP_" + name.upper().replace("-", "_")] = value
    status: list[str] = []

    def start_response(line: str, _headers: list[tuple[str, str]], exc: Any = None) -> Any:
        status.append(line)
        return None

    def call() -> int:
        status.clear()
        environ = dict(template)
        environ["wsgi.input"] = io.BytesIO(BODY)
        result: Iterable[bytes] = app(environ, start_response)
        for _ in result:
            pass
        close = getattr(result, "close", None)
        if close is not None:
            close()
        return int(status[0].split(" ", 1)[0])

    return call


@dataclass
class Timing:
    name: str
    wall_us: list[float]
    cpu_us: list[float]

    def best(self, clock: str) -> float:
        return min(self.cpu_us if clock == "cpu" else self.wall_us)

    def median(self, clock: str) -> float:
        return statistics.median(self.cpu_us if clock == "cpu" else self.wall_us)


def time_contenders(
    contenders: dict[str, Callable[[], Any]], *, rounds: int, number: int, is_async: bool
) -> list[Timing]:
    """Time every contender in interleaved rounds (machine noise hits them all alike).

    Each round records wall time and this process's CPU time per request; CPU time
    ignores the time other processes take the CPU away, wall time includes waiting
    on Redis. A full collection before each contender's block keeps one
    contender's garbage off the next one's clock.
    """
    timings = {name: Timing(name, [], []) for name in contenders}
    warmup = max(200, number // 10)

    def record(name: str, wall: float, cpu: float) -> None:
        timings[name].wall_us.append(wall / number * 1e6)
        timings[name].cpu_us.append(cpu / number * 1e6)

    async def run_async() -> None:
        for name, call in contenders.items():
            for _ in range(warmup):
                status = await call()
            assert status == 200, f"{name}: warm-up answered {status}"
        for _ in range(rounds):
            for name, call in contenders.items():
                gc.collect()  # the last contender's garbage is not this one's to collect
                wall, cpu = time.perf_counter(), time.process_time()
                for _ in range(number):
                    await call()
                record(name, time.perf_counter() - wall, time.process_time() - cpu)
            for name, call in contenders.items():
                assert await call() == 200, f"{name} stopped answering 200"

    def run_sync() -> None:
        for name, call in contenders.items():
            for _ in range(warmup):
                status = call()
            assert status == 200, f"{name}: warm-up answered {status}"
        for _ in range(rounds):
            for name, call in contenders.items():
                gc.collect()
                wall, cpu = time.perf_counter(), time.process_time()
                for _ in range(number):
                    call()
                record(name, time.perf_counter() - wall, time.process_time() - cpu)
            for name, call in contenders.items():
                assert call() == 200, f"{name} stopped answering 200"

    if is_async:
        asyncio.run(run_async())
    else:
        run_sync()
    return list(timings.values())


# -- Redis ------------------------------------------------------------------------------


@contextmanager
def private_redis() -> Iterator[str | None]:
    """Start a throwaway redis-server (so command counts see no other client).

    Without one installed, use ``TENANTKIT_BENCH_REDIS_URL`` (None: skip the Redis runs).
    """
    if shutil.which("redis-server") is None:
        yield os.environ.get("TENANTKIT_BENCH_REDIS_URL")
        return
    with redis_server() as (url, _):
        yield url


class RoundTrips:
    """Count commands (or pipelines) redis-py sends: one per network round trip."""

    def __init__(self) -> None:
        self.count = 0
        self._patched: list[tuple[Any, Any]] = []

    def __enter__(self) -> RoundTrips:
        import redis.asyncio.connection as aconn
        import redis.connection as conn

        counter = self
        sync_send = conn.AbstractConnection.send_packed_command
        async_send = aconn.AbstractConnection.send_packed_command

        def counted(self: Any, command: Any, check_health: bool = True) -> None:
            counter.count += 1
            sync_send(self, command, check_health)

        async def acounted(self: Any, command: Any, check_health: bool = True) -> None:
            counter.count += 1
            await async_send(self, command, check_health)

        conn.AbstractConnection.send_packed_command = counted  # type: ignore[method-assign]
        aconn.AbstractConnection.send_packed_command = acounted  # type: ignore[method-assign]
        self._patched = [
            (conn.AbstractConnection, sync_send),
            (aconn.AbstractConnection, async_send),
        ]
        return self

    def __exit__(self, *exc: object) -> None:
        for cls, original in self._patched:
            cls.send_packed_command = original


def server_commands(url: str) -> int:
    """Commands the server executed so far (those inside Lua scripts included)."""
    import redis

    client = redis.Redis.from_url(url)
    try:
        stats = client.info("commandstats")
    finally:
        client.close()
    return sum(int(v["calls"]) for k, v in stats.items() if not k.startswith("cmdstat_info"))


# -- output -----------------------------------------------------------------------------


def table(title: str, header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(str(row[i])) for row in [header, *rows]) for i in range(len(header))]
    line = "  ".join("-" * w for w in widths)
    out = [title, line, "  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)), line]
    for row in rows:
        cells = [
            str(c).ljust(w) if i == 0 else str(c).rjust(w)
            for i, (c, w) in enumerate(zip(row, widths, strict=True))
        ]
        out.append("  ".join(cells))
    out.append(line)
    return "\n".join(out)


def overhead_rows(timings: list[Timing], baseline: str, clock: str) -> list[list[str]]:
    base = next(t for t in timings if t.name == baseline)
    rows = []
    for t in timings:
        rows.append(
            [
                t.name,
                f"{t.best(clock):.1f}",
                f"{t.median(clock):.1f}",
                "—" if t is base else f"{t.best(clock) - base.best(clock):+.1f}",
                f"{t.best(clock) / base.best(clock):.2f}x",
            ]
        )
    return rows
