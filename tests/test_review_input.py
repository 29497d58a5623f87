"""Hostile request input through both adapters: a 4xx problem or a served request, never a 500."""

from __future__ import annotations

import io
import json
from collections.abc import Callable, Iterable
from typing import Any

import pytest

from tenantkit import context
from tenantkit._request import content_length, parse_json_object, parse_reported_tokens
from tenantkit.asgi import TenantKitMiddleware
from tenantkit.errors import BadRequest
from tenantkit.wsgi import TenantKitWSGIMiddleware

CHAT = "/api/chat/completions"
# str.isdigit() is true for these, int() refuses them or they pass its digit limit.
NOT_A_LENGTH = ["\xb2", "1\xb9", "9" * 5000]


@pytest.fixture
def kit(make_kit: Callable[..., Any]) -> Any:
    return make_kit(max_body_bytes=16_384)


def _asgi_request(
    kit: Any, jwt: str, headers: list[tuple[bytes, bytes]], body: bytes, reported: bytes = b"3"
) -> tuple[int, dict[bytes, bytes], bytes]:
    """Run one POST through the ASGI middleware with raw (latin-1) header bytes."""
    import anyio

    seen: dict[str, Any] = {}

    async def app(scope: Any, receive: Any, send: Any) -> None:
        message = await receive()
        seen["body"] = message["body"]
        seen["tenant"] = context.current_tenant_id()
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"x-tenantkit-tokens-used", reported)],
            }
        )
        await send({"type": "http.response.body", "body": b"ok"})

    middleware = TenantKitMiddleware(app, kit)
    sent: list[dict[str, Any]] = []
    chunks = [{"type": "http.request", "body": body, "more_body": False}]

    async def receive() -> dict[str, Any]:
        return chunks.pop(0) if chunks else {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {
        "type": "http",
        "method": "POST",
        "path": CHAT,
        "headers": [(b"authorization", f"Bearer {jwt}".encode()), *headers],
        "query_string": b"",
        "client": ("127.0.0.1", 1234),
    }
    anyio.run(middleware, scope, receive, send)
    start = sent[0]
    payload = b"".join(m.get("body", b"") for m in sent[1:])
    return start["status"], dict(start["headers"]), payload


def _wsgi_request(
    kit: Any, jwt: str, environ_extra: dict[str, str], body: bytes, reported: str = "3"
) -> tuple[str, list[tuple[str, str]], bytes]:
    """Run one POST through the WSGI middleware with the given environ values."""

    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        assert context.current_tenant_id() == "acme"
        environ["wsgi.input"].read()
        start_response("200 OK", [("X-TenantKit-Tokens-Used", reported)])
        return [b"ok"]

    middleware = TenantKitWSGIMiddleware(app, kit)
    environ: dict[str, Any] = {
        "REQUEST_METHOD": "POST",
        "PATH_INFO": CHAT,
        "HTTP_AUTHORIZATION": f"Bearer {jwt}",
        "REMOTE_ADDR": "127.0.0.1",
        "wsgi.input": io.BytesIO(body),
        "wsgi.url_scheme": "http",
        "CONTENT_LENGTH": str(len(body)),  # as a server sets it; wsgi.input is not terminated
        **environ_extra,
    }
    captured: dict[str, Any] = {}

    def start_response(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
        captured["status"], captured["headers"] = status, headers
        return lambda data: None

    result = middleware(environ, start_response)
    try:
        payload = b"".join(result)
    finally:
        getattr(result, "close", lambda: None)()
    assert context.get_context() is None
    return captured["status"], captured["headers"], payload


@pytest.mark.parametrize("value", NOT_A_LENGTH)
def test_content_length_helper_ignores_non_ascii_digits(value: str) -> None:
    """content_length() reads only ASCII decimal digits, and a huge one as larger than any limit."""
    parsed = content_length(value)
    if value.isascii():
        assert parsed is not None and parsed > 10**18
    else:
        assert parsed is None


@pytest.mark.parametrize("value", NOT_A_LENGTH)
def test_asgi_odd_content_length_is_not_a_500(
    kit: Any, jwt_for: Callable[..., str], value: str
) -> None:
    """A Content-Length of superscript digits or 5,000 digits is ignored or a 413, never a 500."""
    body = json.dumps({"model": "gpt-4o"}).encode()
    headers = [(b"content-length", value.encode("latin-1"))]
    status, _, payload = _asgi_request(kit, jwt_for(kit, "acme"), headers, body)
    assert status in (200, 413), payload


@pytest.mark.parametrize("value", NOT_A_LENGTH)
def test_wsgi_odd_content_length_is_not_a_500(
    kit: Any, jwt_for: Callable[..., str], value: str
) -> None:
    """An odd CONTENT_LENGTH is a 400 (where the body ends is unknown) or a 413 on WSGI."""
    body = json.dumps({"model": "gpt-4o"}).encode()
    status, _, payload = _wsgi_request(kit, jwt_for(kit, "acme"), {"CONTENT_LENGTH": value}, body)
    assert status[:3] == ("413" if value.isascii() else "400"), payload


def test_json_number_past_the_digit_limit_is_400(kit: Any, jwt_for: Callable[..., str]) -> None:
    """A policy body holding a 5,000-digit number is a 400 problem, not a ValueError (500)."""
    body = b'{"model": "gpt-4o", "max_tokens": ' + b"7" * 5000 + b"}"
    status, _, payload = _asgi_request(kit, jwt_for(kit, "acme"), [], body)
    assert status == 400
    assert json.loads(payload)["status"] == 400
    with pytest.raises(BadRequest):
        parse_json_object(body)


@pytest.mark.parametrize("reported", ["\xb2", "\u0663", "9" * 5000, "1" * 19])
def test_odd_reported_tokens_are_ignored(
    kit: Any, jwt_for: Callable[..., str], reported: str
) -> None:
    """A token header of non-ASCII digits or absurd length is ignored, on both adapters."""
    assert parse_reported_tokens(reported, None) is None
    body = json.dumps({"model": "gpt-4o"}).encode()
    if reported.isascii() or reported == "\xb2":
        status, headers, _ = _asgi_request(
            kit, jwt_for(kit, "acme"), [], body, reported=reported.encode("latin-1")
        )
        assert status == 200 and b"x-tenantkit-tokens-used" not in headers
    wsgi_status, _, payload = _wsgi_request(kit, jwt_for(kit, "acme"), {}, body, reported=reported)
    assert wsgi_status.startswith("200") and payload == b"ok"


@pytest.mark.parametrize("name", ["resolvers", "trusted_proxies", "exclude_paths", "policy_paths"])
def test_a_bare_string_for_a_path_list_is_a_configuration_error(name: str) -> None:
    """policy_paths="/v1/chat" would be read per character and check nothing: refused."""
    from tenantkit.errors import ConfigurationError
    from tenantkit.settings import Settings

    with pytest.raises(ConfigurationError, match=name):
        Settings(**{name: "/v1/chat/completions"})


def test_wsgi_result_that_cannot_be_iterated_unbinds_the_tenant(
    kit: Any, jwt_for: Callable[..., str]
) -> None:
    """An app whose response iterable raises in iter() leaves no tenant bound in the thread."""

    class Broken:
        def __iter__(self) -> Any:
            raise RuntimeError("lazy response failed")

    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Any:
        return Broken()

    environ = {
        "REQUEST_METHOD": "GET",
        "PATH_INFO": "/things",
        "HTTP_AUTHORIZATION": f"Bearer {jwt_for(kit, 'acme')}",
        "wsgi.input": io.BytesIO(b""),
    }
    with pytest.raises(RuntimeError, match="lazy response"):
        TenantKitWSGIMiddleware(app, kit)(environ, lambda status, headers, exc=None: None)
    assert context.get_context() is None


def _asgi_get(kit: Any, headers: list[tuple[bytes, bytes]]) -> tuple[int, str | None]:
    """Run one GET through the ASGI middleware; return the status and the tenant the app saw."""
    import anyio

    seen: list[str] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        seen.append(context.current_tenant_id())
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {"type": "http", "method": "GET", "path": "/things", "headers": headers}
    anyio.run(TenantKitMiddleware(app, kit), scope, receive, send)
    return sent[0]["status"], (seen[0] if seen else None)


def test_repeated_tenant_header_is_refused_not_first_wins(make_kit: Callable[..., Any]) -> None:
    """Two X-Tenant-ID lines (a client's, then a gateway's) are a 400, never the client's pick."""
    kit = make_kit(resolvers=("header",), trust_tenant_header=True, require_credential=False)
    assert _asgi_get(kit, [(b"x-tenant-id", b"acme")]) == (200, "acme")
    status, tenant = _asgi_get(kit, [(b"x-tenant-id", b"globex"), (b"x-tenant-id", b"acme")])
    assert (status, tenant) == (400, None)


def test_repeated_credentials_are_refused(kit: Any, jwt_for: Callable[..., str]) -> None:
    """Two Authorization or X-API-Key lines are a 401 on ASGI, as the joined WSGI value is."""
    first = f"Bearer {jwt_for(kit, 'acme')}".encode()
    second = f"Bearer {jwt_for(kit, 'globex')}".encode()
    assert _asgi_get(kit, [(b"authorization", first)]) == (200, "acme")
    assert _asgi_get(kit, [(b"authorization", first), (b"authorization", second)])[0] == 401
    key_a = kit.api_keys.issue("acme", name="a").key.encode()
    key_b = kit.api_keys.issue("globex", name="b").key.encode()
    assert _asgi_get(kit, [(b"x-api-key", key_a), (b"x-api-key", key_b)])[0] == 401


@pytest.mark.parametrize("path", ["/\u20ac/things", "/\udcff/things"])
def test_wsgi_path_that_is_not_latin1_is_served(
    kit: Any, jwt_for: Callable[..., str], path: str
) -> None:
    """A PATH_INFO already decoded past latin-1 (a server breaking PEP 3333) is not a 500."""

    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        start_response("200 OK", [])
        return [context.current_tenant_id().encode()]

    environ = {
        "REQUEST_METHOD": "GET",
        "PATH_INFO": path,
        "HTTP_AUTHORIZATION": f"Bearer {jwt_for(kit, 'acme')}",
        "wsgi.input": io.BytesIO(b""),
    }
    result = TenantKitWSGIMiddleware(app, kit)(environ, lambda status, headers, exc=None: None)
    assert b"".join(result) == b"acme"
    getattr(result, "close", lambda: None)()
    assert context.get_context() is None
