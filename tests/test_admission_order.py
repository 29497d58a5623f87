"""Who the caller is comes before its body: a caller refused for it never uploads one.

On every adapter (ASGI, WSGI, the Flask extension), a policy route reads the
body only once the caller is identified, its tenant loaded and active, and its
request limits leave it room: each test's body stream fails the test if read.
"""

from __future__ import annotations

import asyncio
import io
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from flask import Flask, jsonify, request

from tenantkit.asgi import TenantKitMiddleware
from tenantkit.flask import FlaskTenantKit
from tenantkit.settings import QuotaSettings
from tenantkit.wsgi import TenantKitWSGIMiddleware

CHAT = "/api/chat/completions"
PAYLOAD = json.dumps({"model": "m", "messages": [{"role": "user", "content": "hi"}]}).encode()
OVERSIZE = b'{"model": "m", "pad": "' + b"x" * 2048 + b'"}'


@dataclass
class Sent:
    """What an adapter answered, and how much of the body it (or the app) read."""

    status: int
    headers: dict[str, str]
    body: bytes
    reads: int = 0
    app_calls: int = 0
    seen: list[bytes] = field(default_factory=list)

    def problem(self) -> dict[str, Any]:
        assert self.headers["content-type"] == "application/problem+json"
        parsed: dict[str, Any] = json.loads(self.body)
        return parsed


Post = Callable[..., Sent]


class GuardedInput(io.BytesIO):
    """A ``wsgi.input`` that counts reads, and fails the test on one if ``allowed`` is off."""

    def __init__(self, data: bytes, allowed: bool) -> None:
        super().__init__(data)
        self.allowed = allowed
        self.reads = 0

    def _touch(self) -> None:
        self.reads += 1
        if not self.allowed:
            raise AssertionError("the request body was read")

    def read(self, size: int | None = -1) -> bytes:
        self._touch()
        return super().read(size)

    def readline(self, size: int | None = -1) -> bytes:
        self._touch()
        return super().readline(size)

    def readlines(self, hint: int | None = -1) -> list[bytes]:
        self._touch()
        return super().readlines(hint)


def _post_asgi(
    kit: Any, headers: dict[str, str], body: bytes, *, chunked: bool = False, read: bool = True
) -> Sent:
    """POST through the ASGI middleware; ``receive`` counts its calls (chunks of 512 bytes)."""
    chunks = [body[i : i + 512] for i in range(0, len(body), 512)] or [b""]
    sent = Sent(0, {}, b"")
    messages: list[dict[str, Any]] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        sent.app_calls += 1
        got = b""
        while True:
            message = await receive()
            got += message.get("body", b"")
            if not message.get("more_body"):
                break
        sent.seen.append(got)
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"{}"})

    async def receive() -> dict[str, Any]:
        if not read:
            raise AssertionError("the request body was read")
        sent.reads += 1
        if sent.reads <= len(chunks):
            more = sent.reads < len(chunks)
            return {"type": "http.request", "body": chunks[sent.reads - 1], "more_body": more}
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        messages.append(message)

    raw = [(k.lower().encode(), v.encode()) for k, v in headers.items()]
    raw.append((b"content-type", b"application/json"))
    if not chunked:
        raw.append((b"content-length", str(len(body)).encode()))
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": CHAT,
        "raw_path": CHAT.encode(),
        "root_path": "",
        "query_string": b"",
        "headers": raw,
        "client": ("127.0.0.1", 5000),
        "server": ("test", 80),
    }
    asyncio.run(TenantKitMiddleware(app, kit)(scope, receive, send))
    start = messages[0]
    sent.status = start["status"]
    sent.headers = {k.decode().lower(): v.decode() for k, v in start["headers"]}
    sent.body = b"".join(m.get("body", b"") for m in messages[1:])
    return sent


def _post_wsgi(kit: Any, headers: dict[str, str], body: bytes, *, read: bool = True) -> Sent:
    """POST through the WSGI middleware with a ``wsgi.input`` that may not be read."""
    sent = Sent(0, {}, b"")
    stream = GuardedInput(body, allowed=read)

    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
        sent.app_calls += 1
        sent.seen.append(environ["wsgi.input"].read(int(environ["CONTENT_LENGTH"])))
        start_response("200 OK", [("Content-Type", "application/json")])
        return [b"{}"]

    environ: dict[str, Any] = {
        "REQUEST_METHOD": "POST",
        "PATH_INFO": CHAT,
        "QUERY_STRING": "",
        "SERVER_NAME": "test",
        "SERVER_PORT": "80",
        "SERVER_PROTOCOL": "HTTP/1.1",
        "REMOTE_ADDR": "127.0.0.1",
        "CONTENT_TYPE": "application/json",
        "CONTENT_LENGTH": str(len(body)),
        "wsgi.input": stream,
        "wsgi.url_scheme": "http",
    }
    for name, value in headers.items():
        environ["HTTP_" + name.upper().replace("-", "_")] = value

    def start_response(status: str, response_headers: list[tuple[str, str]], *_: Any) -> Any:
        sent.status = int(status[:3])
        sent.headers = {k.lower(): v for k, v in response_headers}

    result = TenantKitWSGIMiddleware(app, kit)(environ, start_response)
    try:
        sent.body = b"".join(result)
    finally:
        close = getattr(result, "close", None)
        if close is not None:
            close()
    sent.reads = stream.reads
    return sent


def _post_flask(kit: Any, headers: dict[str, str], body: bytes, *, read: bool = True) -> Sent:
    """POST through a Flask app with the extension; its input stream may not be read."""
    flask_app = Flask(__name__)
    FlaskTenantKit(flask_app, kit=kit)
    sent = Sent(0, {}, b"")

    @flask_app.post(CHAT)
    def chat() -> Any:
        sent.app_calls += 1
        sent.seen.append(request.get_data())
        return jsonify({})

    stream = GuardedInput(body, allowed=read)
    response = flask_app.test_client().post(
        CHAT,
        input_stream=stream,
        content_length=len(body),
        content_type="application/json",
        headers=headers,
    )
    sent.status = response.status_code
    sent.headers = {k.lower(): v for k, v in response.headers.items()}
    sent.body = response.get_data()
    sent.reads = stream.reads
    return sent


@pytest.fixture(params=["asgi", "wsgi", "flask"])
def post(request: pytest.FixtureRequest) -> Iterator[Post]:
    yield {"asgi": _post_asgi, "wsgi": _post_wsgi, "flask": _post_flask}[request.param]


@pytest.fixture
def kit(make_kit: Callable[..., Any]) -> Any:
    return make_kit(
        tenants={
            "acme": {"quota_requests_per_minute": 10},
            "globex": {},
            "sleepy": {"status": "suspended", "quota_requests_per_minute": 10},
            "busy": {"quota_requests_per_minute": 1},
        },
        max_body_bytes=1024,
    )


def _bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


REFUSED = [
    pytest.param(lambda kit, jwt: {}, 401, "unauthorized", id="no-credentials"),
    pytest.param(lambda kit, jwt: _bearer("not.a.jwt"), 401, "unauthorized", id="bad-jwt"),
    pytest.param(
        lambda kit, jwt: _bearer(jwt(kit, "acme")[:-4] + "AAAA"), 401, "unauthorized", id="forged"
    ),
    pytest.param(
        lambda kit, jwt: {"X-API-Key": "tk_live_forged"}, 401, "unauthorized", id="forged-key"
    ),
    pytest.param(
        lambda kit, jwt: {**_bearer(jwt(kit, "acme")), "X-Tenant-ID": "globex"},
        403,
        "tenant-mismatch",
        id="mismatch",
    ),
    pytest.param(
        lambda kit, jwt: _bearer(jwt(kit, "nobody")), 404, "tenant-not-found", id="unknown"
    ),
    pytest.param(
        lambda kit, jwt: _bearer(jwt(kit, "sleepy")), 403, "tenant-suspended", id="suspended"
    ),
]


@pytest.mark.parametrize("size", ["small", "oversize"])
@pytest.mark.parametrize(("headers", "status", "slug"), REFUSED)
def test_a_refused_caller_never_uploads_its_body(
    kit: Any,
    jwt_for: Callable[..., str],
    post: Post,
    headers: Callable[..., dict[str, str]],
    status: int,
    slug: str,
    size: str,
) -> None:
    """An unauthenticated, forged, mismatched, unknown or suspended caller: refused unread.

    Past max_body_bytes too: such a caller gets that refusal, not a 413.
    """
    payload = PAYLOAD if size == "small" else OVERSIZE
    sent = post(kit, headers(kit, jwt_for), payload, read=False)
    assert (sent.status, sent.reads, sent.app_calls) == (status, 0, 0)
    assert sent.problem()["type"].endswith(slug)


def test_an_unannounced_oversize_body_of_an_unknown_caller_is_401_unread(kit: Any) -> None:
    """ASGI, no Content-Length (a chunked upload): 401 before the first chunk is received."""
    sent = _post_asgi(kit, {}, OVERSIZE, chunked=True, read=False)
    assert (sent.status, sent.reads) == (401, 0)


def _oversize_is_413_with_its_policy(
    kit: Any, headers: dict[str, str], post: Post, sent: Sent
) -> None:
    assert sent.status == 413 and sent.app_calls == 0
    assert sent.problem()["type"].endswith("payload-too-large")
    assert sent.headers["ratelimit-policy"] == '"tenant-requests";q=10;w=60;qu="requests"'
    admitted = post(kit, headers, PAYLOAD)
    assert admitted.status == 200 and admitted.seen == [PAYLOAD]
    assert '"tenant-requests";r=9;' in admitted.headers["ratelimit"]


def test_an_oversize_body_of_an_identified_caller_is_413_with_its_policy(
    kit: Any, jwt_for: Callable[..., str], post: Post
) -> None:
    """An identified caller's oversize body: 413 naming its limits, and nothing charged."""
    headers = _bearer(jwt_for(kit, "acme"))
    _oversize_is_413_with_its_policy(kit, headers, post, post(kit, headers, OVERSIZE))


def test_an_unannounced_oversize_body_of_an_identified_caller_is_413(
    kit: Any, jwt_for: Callable[..., str]
) -> None:
    """ASGI, no Content-Length: 413 once past the limit, naming its limits, nothing charged."""
    headers = _bearer(jwt_for(kit, "acme"))
    sent = _post_asgi(kit, headers, OVERSIZE, chunked=True)
    _oversize_is_413_with_its_policy(kit, headers, _post_asgi, sent)


def test_a_caller_over_its_request_quota_gets_429_unread(
    kit: Any, jwt_for: Callable[..., str], post: Post
) -> None:
    """Once refused by its request quota, a caller's next request is a 429 before its body is read.

    The first refusal reads the body (an admitted request pays no peek at the
    buckets before its body); every later one, until a request is admitted
    again, is answered unread.
    """
    denials: list[tuple[str, int]] = []
    kit.denials = lambda identity, request, error: denials.append(
        (identity.tenant_id, error.status)
    )
    headers = _bearer(jwt_for(kit, "busy"))
    first = post(kit, headers, PAYLOAD)
    assert first.status == 200 and first.seen == [PAYLOAD]
    refused = post(kit, headers, PAYLOAD)
    assert (refused.status, refused.app_calls) == (429, 0)
    second = post(kit, headers, PAYLOAD, read=False)
    assert (second.status, second.reads, second.app_calls) == (429, 0, 0)
    assert second.problem()["limit"] == "tenant-requests"
    assert int(second.headers["retry-after"]) >= 1
    assert second.headers["ratelimit-policy"] == '"tenant-requests";q=1;w=60;qu="requests"'
    assert '"tenant-requests";r=0;' in second.headers["ratelimit"]
    assert denials == [("busy", 429), ("busy", 429)]


def test_an_admitted_body_reaches_the_app_intact(
    kit: Any, jwt_for: Callable[..., str], post: Post
) -> None:
    """An identified caller within its limits: the body is read once and replayed whole."""
    sent = post(kit, _bearer(jwt_for(kit, "globex")), PAYLOAD)
    assert sent.status == 200 and sent.seen == [PAYLOAD]


@pytest.mark.redis
def test_on_redis_a_repeat_denial_is_429_unread(
    make_kit: Callable[..., Any],
    jwt_for: Callable[..., str],
    post: Post,
    redis_url: str,
    redis_prefix: str,
) -> None:
    """Redis: once a 429 is cached, the next request is refused from the cache, unread."""
    quota = QuotaSettings(storage_uri=redis_url, key_prefix=redis_prefix)
    kit = make_kit(tenants={"busy": {"quota_requests_per_minute": 1}}, quota=quota)
    headers = _bearer(jwt_for(kit, "busy"))
    try:
        assert post(kit, headers, PAYLOAD).status == 200
        refused = post(kit, headers, PAYLOAD)  # Redis decides (after the body): a round trip
        assert (refused.status, refused.app_calls) == (429, 0)
        trips = kit.quotas.stats.round_trips
        again = post(kit, headers, PAYLOAD, read=False)
        assert (again.status, again.reads, again.app_calls) == (429, 0, 0)
        assert again.problem()["limit"] == "tenant-requests"
        assert kit.quotas.stats.round_trips == trips
    finally:
        import redis

        client = redis.Redis.from_url(redis_url)
        keys = list(client.scan_iter(match=f"{redis_prefix}:*"))
        if keys:
            client.delete(*keys)
        client.close()
        kit.quotas.close()
