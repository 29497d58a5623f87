"""The WSGI middleware under a real threaded server: identity, rejections, context isolation."""

from __future__ import annotations

import io
import json
import random
import socket
import threading
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import pytest
from werkzeug.serving import make_server

from tenantkit import context
from tenantkit.wsgi import ENVIRON_TENANT, TenantKitWSGIMiddleware


def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
    """A bare WSGI app whose routes check the tenant they see."""
    path = environ["PATH_INFO"]
    expected = environ.get("HTTP_X_EXPECT")
    if path == "/health":
        start_response("200 OK", [("Content-Type", "application/json")])
        return [b'{"status":"ok"}']
    tenant = context.current_tenant_id()
    if expected is not None and tenant != expected:
        start_response("599 Mismatch", [("Content-Type", "text/plain")])
        return [b"MISMATCH"]
    if path == "/boom":
        raise RuntimeError("handler failed")
    if path == "/stream":
        start_response("200 OK", [("Content-Type", "text/plain")])
        return _stream(expected)
    if path == "/api/chat/completions":
        body = environ["wsgi.input"].read(int(environ["CONTENT_LENGTH"]))
        context.report_tokens(5)
        start_response(
            "200 OK", [("Content-Type", "application/json"), ("X-TenantKit-Tokens-Used", "1")]
        )
        return [json.dumps({"echo": json.loads(body)}).encode()]
    config = environ[ENVIRON_TENANT]
    start_response("200 OK", [("Content-Type", "application/json")])
    return [json.dumps({"tenant": tenant, "config": config.id}).encode()]


def _stream(expected: str | None) -> Iterator[bytes]:
    for i in range(3):
        tenant = context.current_tenant_id()
        yield f"{i}:{'ok' if tenant == expected else 'MISMATCH'};".encode()


@pytest.fixture
def kit(make_kit: Callable[..., Any]) -> Any:
    return make_kit(
        tenants={"acme": {}, "globex": {}, "sleepy": {"status": "suspended"}},
        max_body_bytes=1024,
    )


@pytest.fixture
def server(kit: Any) -> Iterator[str]:
    """Serve the wrapped app on a free loopback port with a threaded werkzeug server."""

    wrapped = TenantKitWSGIMiddleware(app, kit)

    def outer(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        try:
            return wrapped(environ, start_response)
        except RuntimeError:
            start_response("500 Internal Server Error", [("Content-Type", "text/plain")])
            return [b"handler failed"]

    srv = make_server("127.0.0.1", 0, outer, threaded=True)
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{srv.server_port}"
    finally:
        srv.shutdown()
        thread.join(5)


def test_jwt_and_api_key_admit(kit: Any, server: str, jwt_for: Callable[..., str]) -> None:
    """JWT and API key admit; the tenant config is under environ['tenantkit.tenant']."""
    key = kit.api_keys.issue("globex", name="ci").key
    with httpx.Client(base_url=server) as client:
        r1 = client.get("/x", headers={"Authorization": f"Bearer {jwt_for(kit, 'acme')}"})
        r2 = client.get("/x", headers={"X-API-Key": key, "X-Request-ID": "abc"})
    assert r1.json() == {"tenant": "acme", "config": "acme"}
    assert r2.json() == {"tenant": "globex", "config": "globex"}
    assert r2.headers["x-request-id"] == "abc"


@pytest.mark.parametrize(
    ("tenant", "extra", "status", "slug"),
    [
        (None, {}, 401, "unauthorized"),
        ("acme", {"X-Tenant-ID": "globex"}, 403, "tenant-mismatch"),
        ("nobody", {}, 404, "tenant-not-found"),
        ("sleepy", {}, 403, "tenant-suspended"),
    ],
)
def test_rejections_are_problems(
    kit: Any,
    server: str,
    jwt_for: Callable[..., str],
    tenant: str | None,
    extra: dict[str, str],
    status: int,
    slug: str,
) -> None:
    """401, 403 mismatch, 404 unknown and 403 suspended render as problem documents."""
    headers = dict(extra)
    if tenant is not None:
        headers["Authorization"] = f"Bearer {jwt_for(kit, tenant)}"
    r = httpx.get(server + "/x", headers=headers)
    assert r.status_code == status
    assert r.headers["content-type"] == "application/problem+json"
    assert r.json()["type"].endswith(slug) and r.json()["status"] == status
    assert r.headers["x-request-id"]


def test_excluded_path(server: str) -> None:
    """Excluded paths skip the pipeline and still carry X-Request-ID."""
    r = httpx.get(server + "/health")
    assert r.status_code == 200 and r.headers["x-request-id"]


@pytest.mark.parametrize("path", ["/x", "/health"])
def test_app_request_id_header_is_replaced(
    kit: Any, jwt_for: Callable[..., str], path: str
) -> None:
    """An app's own request-id header (any case) gives way to the middleware's: one value."""

    def own_id(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        start_response("200 OK", [("x-request-id", "app-1"), ("X-REQUEST-ID", "app-2")])
        return [b"{}"]

    environ: dict[str, Any] = {
        "REQUEST_METHOD": "GET",
        "PATH_INFO": path,
        "HTTP_AUTHORIZATION": f"Bearer {jwt_for(kit, 'acme')}",
        "HTTP_X_REQUEST_ID": "client-1",
        "wsgi.input": io.BytesIO(),
        "wsgi.url_scheme": "http",
    }
    started: list[list[tuple[str, str]]] = []
    result = TenantKitWSGIMiddleware(own_id, kit)(
        environ, lambda status, headers, exc_info=None: started.append(headers)
    )
    b"".join(result)
    getattr(result, "close", lambda: None)()
    ids = [value for name, value in started[0] if name.lower() == "x-request-id"]
    assert ids == ["client-1"]


def test_body_replay_and_limits(kit: Any, server: str, jwt_for: Callable[..., str]) -> None:
    """The body reaches the app intact; bad and oversize bodies give 400 and 413."""
    auth = {"Authorization": f"Bearer {jwt_for(kit, 'acme')}"}
    payload = {"model": "m", "messages": [{"role": "user", "content": "hello"}]}
    with httpx.Client(base_url=server, headers=auth) as client:
        ok = client.post("/api/chat/completions", json=payload)
        bad = client.post("/api/chat/completions", content=b"{nope")
        big = client.post("/api/chat/completions", content=b"x" * 4096)
    assert ok.json() == {"echo": payload}
    assert "x-tenantkit-tokens-used" not in ok.headers
    assert bad.status_code == 400 and big.status_code == 413


def test_two_tenants_500_interleaved_threaded(
    kit: Any, server: str, jwt_for: Callable[..., str]
) -> None:
    """2 tenants x 500 requests on a threaded server (plain, raising, streaming): no mismatch."""
    tokens = {t: jwt_for(kit, t) for t in ("acme", "globex")}
    plan = [(t, p) for t in tokens for p in ("/x", "/boom", "/stream") for _ in range(167)][:1000]
    random.Random(11).shuffle(plan)

    limits = httpx.Limits(max_connections=16, max_keepalive_connections=16)
    client = httpx.Client(base_url=server, limits=limits)

    def one(item: tuple[str, str]) -> str | None:
        tenant, path = item
        headers = {"Authorization": f"Bearer {tokens[tenant]}", "X-Expect": tenant}
        r = client.get(path, headers=headers)
        if path == "/x" and r.json().get("tenant") != tenant:
            return f"{path} {r.text}"
        if path == "/stream" and (r.status_code != 200 or "MISMATCH" in r.text):
            return f"{path} {r.text}"
        if path == "/boom" and r.status_code != 500:
            return f"{path} {r.status_code}"
        return None

    with client, ThreadPoolExecutor(max_workers=16) as pool:
        results = list(pool.map(one, plan))
    assert [r for r in results if r] == []


# -- reading the body (PEP 3333: never past CONTENT_LENGTH) --------------------------------


class StrictInput:
    """A wsgi.input that fails the test where a socket would block: an unbounded read or one
    past its bytes. ``terminated`` streams end like a dechunked body: ``b""`` at the end."""

    def __init__(self, data: bytes, *, terminated: bool = False) -> None:
        self.data = data
        self.terminated = terminated
        self.pos = 0

    def read(self, size: int | None = -1) -> bytes:
        if size is None or size < 0:
            raise AssertionError("unbounded read of wsgi.input")
        if self.pos + size > len(self.data) and not self.terminated:
            raise AssertionError(f"read of {size} bytes past the body: a socket would block")
        chunk = self.data[self.pos : self.pos + size]
        self.pos += len(chunk)
        return chunk


def _direct_post(
    kit: Any, jwt: str, stream: StrictInput, **environ_extra: Any
) -> tuple[str, bytes]:
    """POST to the chat route through the middleware alone; return the status and body."""
    environ: dict[str, Any] = {
        "REQUEST_METHOD": "POST",
        "PATH_INFO": "/api/chat/completions",
        "HTTP_AUTHORIZATION": f"Bearer {jwt}",
        "wsgi.input": stream,
        "wsgi.url_scheme": "http",
        **environ_extra,
    }
    seen: list[str] = []
    result = TenantKitWSGIMiddleware(app, kit)(
        environ, lambda status, headers, exc_info=None: seen.append(status)
    )
    try:
        payload = b"".join(result)
    finally:
        getattr(result, "close", lambda: None)()
    return seen[0], payload


@pytest.mark.parametrize("declared", [None, ""])
def test_no_content_length_reads_nothing(
    kit: Any, jwt_for: Callable[..., str], declared: str | None
) -> None:
    """Without CONTENT_LENGTH (not input_terminated) the body is empty: wsgi.input is not read."""
    extra = {} if declared is None else {"CONTENT_LENGTH": declared}
    stream = StrictInput(b'{"model": "m"}')
    status, payload = _direct_post(kit, jwt_for(kit, "acme"), stream, **extra)
    assert status.startswith("400") and "empty" in json.loads(payload)["detail"]
    assert stream.pos == 0


def test_input_terminated_reads_to_the_end(kit: Any, jwt_for: Callable[..., str]) -> None:
    """Without CONTENT_LENGTH on an input_terminated stream the whole body is read and replayed."""
    doc = {"model": "m", "messages": [{"role": "user", "content": "x" * 600}]}
    stream = StrictInput(json.dumps(doc).encode(), terminated=True)
    status, payload = _direct_post(
        kit, jwt_for(kit, "acme"), stream, **{"wsgi.input_terminated": True}
    )
    assert status.startswith("200") and json.loads(payload) == {"echo": doc}


def test_input_terminated_body_past_the_limit_is_413(kit: Any, jwt_for: Callable[..., str]) -> None:
    """A terminated body longer than max_body_bytes is a 413, read no further than limit + 1."""
    stream = StrictInput(b"x" * 5000, terminated=True)
    status, _ = _direct_post(kit, jwt_for(kit, "acme"), stream, **{"wsgi.input_terminated": True})
    assert status.startswith("413") and stream.pos <= 1025


@pytest.mark.parametrize("declared", ["-1", "abc", "1.5", "0x10", "\xb2"])
def test_invalid_content_length_is_400(
    kit: Any, jwt_for: Callable[..., str], declared: str
) -> None:
    """A CONTENT_LENGTH that is no plain decimal number is a 400 problem; the body is not read."""
    stream = StrictInput(b'{"model": "m"}')
    status, payload = _direct_post(kit, jwt_for(kit, "acme"), stream, CONTENT_LENGTH=declared)
    assert status.startswith("400") and "Content-Length" in json.loads(payload)["detail"]
    assert stream.pos == 0


def _raw_exchange(base: str, request: bytes) -> bytes:
    """Send raw bytes to the server and read the response head, failing after 5 s, not hanging."""
    host, port = base.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=5) as sock:
        sock.sendall(request)  # the socket stays open for writing: no EOF rescues a read
        received = b""
        while b"\r\n\r\n" not in received:
            chunk = sock.recv(4096)
            if not chunk:
                break
            received += chunk
        return received


def test_real_server_post_without_content_length_does_not_hang(
    kit: Any, server: str, jwt_for: Callable[..., str]
) -> None:
    """On werkzeug's server a POST with neither Content-Length nor chunking answers at once."""
    request = (
        "POST /api/chat/completions HTTP/1.1\r\nHost: test\r\n"
        f"Authorization: Bearer {jwt_for(kit, 'acme')}\r\n\r\n"
    ).encode()
    head = _raw_exchange(server, request)
    assert head.startswith(b"HTTP/1.1 400")


def test_real_server_chunked_body_is_read(
    kit: Any, server: str, jwt_for: Callable[..., str]
) -> None:
    """A chunked body (werkzeug sets input_terminated) is read whole and reaches the app."""
    auth = {"Authorization": f"Bearer {jwt_for(kit, 'acme')}"}
    parts = [b'{"model": ', b'"m", "messages": []}']
    with httpx.Client(base_url=server, headers=auth, timeout=5) as client:
        ok = client.post("/api/chat/completions", content=iter(parts))
        big = client.post("/api/chat/completions", content=iter([b"x" * 700, b"y" * 700]))
    assert ok.status_code == 200 and ok.json() == {"echo": {"model": "m", "messages": []}}
    assert big.status_code == 413


def test_a_response_never_closed_leaves_no_tenant_for_the_next_request(
    kit: Any, jwt_for: Callable[..., str], caplog: pytest.LogCaptureFixture
) -> None:
    """A server that never calls close(): the thread's next request runs with no tenant."""
    seen: list[str | None] = []

    def record(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        ctx = context.get_context()
        seen.append(None if ctx is None else ctx.tenant.id)
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"ok"]

    middleware = TenantKitWSGIMiddleware(record, kit)

    def serve(path: str, tenant: str | None = None) -> None:
        environ: dict[str, Any] = {
            "REQUEST_METHOD": "GET",
            "PATH_INFO": path,
            "wsgi.input": io.BytesIO(),
            "wsgi.url_scheme": "http",
        }
        if tenant is not None:
            environ["HTTP_AUTHORIZATION"] = f"Bearer {jwt_for(kit, tenant)}"
        b"".join(middleware(environ, lambda status, headers, exc_info=None: None))
        # ... and, like the faulty server, never result.close()

    try:
        serve("/x", "acme")
        assert context.get_context() is not None  # left bound by the unclosed response
        with caplog.at_level("WARNING", logger="tenantkit"):
            serve("/health")
        serve("/x", "globex")
        serve("/health")
        assert seen == ["acme", None, "globex", None]
        assert "never closed" in caplog.text
        assert context.get_context() is None  # an excluded path binds nothing itself
    finally:  # whatever failed, leave this test thread with no tenant bound
        leftover = context.get_context()
        if leftover is not None:
            context.unbind_if(leftover)
