"""Edges of the adapters' body handling, through ASGI and WSGI alike."""

from __future__ import annotations

import asyncio
import gzip
import io
import json
import zlib
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import httpx
import pytest

from tenantkit import context
from tenantkit.asgi import TenantKitMiddleware
from tenantkit.wsgi import TenantKitWSGIMiddleware

CHAT = "/api/chat/completions"
LIMIT = 4_096


async def asgi_echo(scope: Any, receive: Any, send: Any) -> None:
    """Answer with the body exactly as received."""
    chunks = []
    while True:
        message = await receive()
        chunks.append(message.get("body", b""))
        if not message.get("more_body"):
            break
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"".join(chunks)})


def wsgi_echo(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
    """Answer with the body exactly as received."""
    raw = environ["wsgi.input"].read(int(environ.get("CONTENT_LENGTH") or 0))
    start_response("200 OK", [])
    return [raw]


@pytest.fixture(params=["asgi", "wsgi"])
def post(request: pytest.FixtureRequest) -> Iterator[Callable[..., httpx.Response]]:
    """POST raw bytes through the chosen adapter in front of an echo app."""
    loop = asyncio.new_event_loop()

    def send(kit: Any, payload: bytes, headers: dict[str, str]) -> httpx.Response:
        if request.param == "wsgi":
            transport = httpx.WSGITransport(app=TenantKitWSGIMiddleware(wsgi_echo, kit))
            with httpx.Client(transport=transport, base_url="http://test") as client:
                return client.post(CHAT, content=payload, headers=headers)

        async def go() -> httpx.Response:
            app = TenantKitMiddleware(asgi_echo, kit)
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
                return await client.post(CHAT, content=payload, headers=headers)

        return loop.run_until_complete(go())

    yield send
    loop.close()


@pytest.fixture
def kit(make_kit: Callable[..., Any]) -> Any:
    return make_kit(
        tenants={"acme": {"allowed_models": ["gpt-4o-mini"], "quota_requests_per_minute": 10}},
        policy_paths=(CHAT,),
        max_body_bytes=LIMIT,
    )


def key(kit: Any, **extra: str) -> dict[str, str]:
    issued = kit.api_keys.issue("acme", name="test")
    return {"X-API-Key": issued.key, "Content-Type": "application/json", **extra}


def doc(model: str, pad: int = 0) -> bytes:
    return json.dumps({"model": model, "messages": [], "user": " " * pad}).encode()


@pytest.mark.parametrize(
    ("encoding", "encode"),
    [
        ("gzip", gzip.compress),
        ("x-gzip", gzip.compress),
        ("deflate", zlib.compress),
        ("GZIP", gzip.compress),
        ("identity", lambda raw: raw),
    ],
)
def test_an_encoded_body_is_checked_decoded_and_replayed_as_sent(
    kit: Any, post: Callable[..., httpx.Response], encoding: str, encode: Callable[..., bytes]
) -> None:
    """A gzip or deflate body: the policy reads the JSON inside, the app gets the bytes sent."""
    headers = key(kit, **{"Content-Encoding": encoding})
    allowed = encode(doc("gpt-4o-mini"))
    served = post(kit, allowed, headers)
    assert served.status_code == 200, served.text
    assert served.content == allowed
    denied = post(kit, encode(doc("gpt-4o")), headers)
    assert denied.status_code == 403
    assert denied.json()["reason"] == "model_not_allowed"


def test_an_encoded_body_past_the_limit_once_decoded_is_413(
    kit: Any, post: Callable[..., httpx.Response]
) -> None:
    """A small gzip body that inflates past max_body_bytes is a 413, not decoded to the end."""
    bomb = gzip.compress(doc("gpt-4o-mini", pad=LIMIT * 100))
    assert len(bomb) < LIMIT
    response = post(kit, bomb, key(kit, **{"Content-Encoding": "gzip"}))
    assert response.status_code == 413
    assert response.headers["content-type"] == "application/problem+json"


@pytest.mark.parametrize(
    ("encoding", "payload", "status"),
    [
        ("br", b"\x0b\x02\x80{}\x03", 415),
        ("gzip", b"\x1f\x8b not gzip at all", 400),
        ("gzip", gzip.compress(doc("gpt-4o-mini"))[:-6], 400),  # truncated
        ("deflate", b"raw bytes", 400),
    ],
    ids=["unknown-coding", "not-gzip", "truncated-gzip", "not-deflate"],
)
def test_a_body_that_cannot_be_decoded_is_a_clear_4xx(
    kit: Any, post: Callable[..., httpx.Response], encoding: str, payload: bytes, status: int
) -> None:
    """An unknown coding is a 415 naming the ones accepted; a corrupt body a 400; never a 500."""
    response = post(kit, payload, key(kit, **{"Content-Encoding": encoding}))
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/problem+json"
    assert "JSON" not in response.json()["detail"]
    if status == 415:
        assert response.headers["accept-encoding"] == "gzip, deflate"
    assert post(kit, doc("gpt-4o-mini"), key(kit)).status_code == 200


class _DroppedStream(io.RawIOBase):
    """A request body whose client goes away after a few bytes, as a socket does."""

    def __init__(self) -> None:
        self.sent = False

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        if self.sent:
            raise ConnectionResetError("connection reset by peer")
        self.sent = True
        buffer[:4] = b'{"mo'
        return 4


@pytest.mark.parametrize("terminated", [False, True], ids=["content-length", "chunked"])
def test_wsgi_client_gone_during_the_body_is_a_400_not_an_exception(
    kit: Any, terminated: bool
) -> None:
    """A socket error while reading the body is a 400 problem (as werkzeug's ClientDisconnected),
    not an exception the server turns into a 500; the app never runs, nothing is charged."""
    called: list[bool] = []

    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        called.append(True)
        start_response("200 OK", [])
        return [b"ok"]

    environ: dict[str, Any] = {
        "REQUEST_METHOD": "POST",
        "PATH_INFO": CHAT,
        "HTTP_X_API_KEY": key(kit)["X-API-Key"],
        "wsgi.input": io.BufferedReader(_DroppedStream()),
        "wsgi.url_scheme": "http",
    }
    if terminated:
        environ["wsgi.input_terminated"] = True
    else:
        environ["CONTENT_LENGTH"] = "100"
    started: list[str] = []
    result = TenantKitWSGIMiddleware(app, kit)(
        environ, lambda status, headers, exc_info=None: started.append(status)
    )
    payload = json.loads(b"".join(result))
    assert started == ["400 Bad Request"]
    assert payload["status"] == 400
    assert not called
    assert context.get_context() is None
    follow_up = post_wsgi(kit, doc("gpt-4o-mini"))
    assert follow_up.headers["ratelimit"].startswith('"tenant-requests";r=9;')


def post_wsgi(kit: Any, payload: bytes) -> httpx.Response:
    transport = httpx.WSGITransport(app=TenantKitWSGIMiddleware(wsgi_echo, kit))
    with httpx.Client(transport=transport, base_url="http://test") as client:
        return client.post(CHAT, content=payload, headers=key(kit))
