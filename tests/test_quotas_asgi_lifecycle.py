"""The ASGI response lifecycle and the reservation: what is refunded, which headers win."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import pytest
from starlette.applications import Starlette
from starlette.background import BackgroundTask
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from tests.test_quotas_adapters import (
    CHAT,
    ESTIMATE,
    TOKEN_HEADER,
    FakeClock,
    body,
    clock,
    every_header_kit,
    key_for,
    make,
    remaining_tokens,
    wsgi_call,
)

from tenantkit import context
from tenantkit.asgi import TenantKitMiddleware

__all__ = ["clock", "make"]  # fixtures, imported for pytest

pytestmark = pytest.mark.anyio

Message = dict[str, Any]
START: Message = {"type": "http.response.start", "status": 200, "headers": []}
PART: Message = {"type": "http.response.body", "body": b"a", "more_body": True}
LAST: Message = {"type": "http.response.body", "body": b"b", "more_body": False}


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


async def call(kit: Any, app: Any, headers: dict[str, str]) -> list[Message]:
    """Serve one chat POST to ``app`` behind the middleware; return what was sent."""
    payload = body()
    raw = [(k.lower().encode(), v.encode()) for k, v in headers.items()]
    raw.append((b"content-length", str(len(payload)).encode()))
    scope = {
        "type": "http",
        "method": "POST",
        "path": CHAT,
        "headers": raw,
        "query_string": b"",
        "client": ("10.0.0.1", 1),
    }
    messages = [{"type": "http.request", "body": payload, "more_body": False}]
    sent: list[Message] = []

    async def receive() -> Message:
        return messages.pop(0) if messages else {"type": "http.disconnect"}

    async def send(message: Message) -> None:
        sent.append(message)

    await TenantKitMiddleware(app, kit)(scope, receive, send)
    return sent


def replying(*replies: Message) -> Callable[..., Any]:
    async def app(scope: Any, receive: Any, send: Any) -> None:
        await receive()
        for reply in replies:
            await send(dict(reply))

    return app


@pytest.mark.parametrize(
    ("replies", "kept"),
    [
        ((), False),  # the app returned without a response
        ((START,), False),  # started, never finished
        ((START, PART), False),  # stopped mid-body
        ((START, PART, LAST), True),  # a whole response keeps its reservation
        ((START, LAST), True),
        ((START, {"type": "http.response.pathsend", "path": "/f"}), True),  # a FileResponse
    ],
)
async def test_unfinished_responses_release_the_reservation(
    make: Callable[..., Any], replies: tuple[Message, ...], kept: bool
) -> None:
    """A response that never started or never finished refunds its tokens; a whole one not."""
    kit = make(quota_tokens_per_minute=50_000)
    await call(kit, replying(*replies), key_for(kit))
    expected = 50_000 - ESTIMATE if kept else 50_000
    assert remaining_tokens(kit, "acme", 50_000) == expected
    assert context.get_context() is None


def raising_after(*replies: Message) -> Callable[..., Any]:
    """An app that sends ``replies`` and then raises (a failing BackgroundTask, say)."""
    reply = replying(*replies)

    async def app(scope: Any, receive: Any, send: Any) -> None:
        await reply(scope, receive, send)
        raise RuntimeError("failed after the response")

    return app


async def background_task_fails() -> None:
    raise RuntimeError("background task failed")


async def chat_with_failing_task(request: Request) -> Response:
    await request.body()
    return JSONResponse({"ok": True}, background=BackgroundTask(background_task_fails))


@pytest.mark.parametrize(
    ("app", "kept"),
    [
        (raising_after(START, PART, LAST), True),  # delivered, then the app raised
        (raising_after(START, LAST), True),
        (Starlette(routes=[Route(CHAT, chat_with_failing_task, methods=["POST"])]), True),
        (raising_after(START, PART), False),  # raised mid-body: not delivered
        (raising_after(), False),
    ],
    ids=["parts-then-raise", "whole-then-raise", "background-task", "mid-body", "unstarted"],
)
async def test_a_raise_after_the_whole_response_keeps_the_reservation(
    make: Callable[..., Any], app: Any, kept: bool
) -> None:
    """A response sent to its last body chunk is settled even if the app raises afterwards
    (a BackgroundTask); the exception still propagates."""
    kit = make(quota_tokens_per_minute=50_000)
    with pytest.raises(RuntimeError):
        await call(kit, app, key_for(kit))
    expected = 50_000 - ESTIMATE if kept else 50_000
    assert remaining_tokens(kit, "acme", 50_000) == expected
    assert context.get_context() is None


async def test_rate_limit_headers_replace_the_apps(
    make_kit: Callable[..., Any], clock: FakeClock
) -> None:
    """The app's own rate-limit headers give way to the middleware's: one value per field."""
    kit = every_header_kit(make_kit, clock)
    app_headers = [
        (b"content-type", b"application/json"),
        (b"x-ratelimit-limit", b"999"),
        (b"ratelimit", b'"upstream";r=1;t=1'),
        (b"ratelimit-policy", b'"upstream";q=1;w=1'),
        (b"x-ratelimit-remaining-requests", b"12345"),
        (TOKEN_HEADER.lower().encode(), b"7"),
        (b"x-ratelimit-upstream", b"kept"),
    ]
    start = {**START, "headers": app_headers}
    sent = await call(kit, replying(start, LAST), key_for(kit))
    headers = sent[0]["headers"]
    names = [name for name, _ in headers]
    assert len(names) == len(set(names)), headers
    values = dict(headers)
    assert values[b"x-ratelimit-limit"] == b"10"
    assert values[b"x-ratelimit-remaining-requests"] == b"9"
    assert b"upstream" not in values[b"ratelimit"] + values[b"ratelimit-policy"]
    assert values[b"x-ratelimit-upstream"] == b"kept"
    assert values[b"content-type"] == b"application/json"
    assert TOKEN_HEADER.lower().encode() not in values


def test_finish_without_a_status_settles(make: Callable[..., Any]) -> None:
    """A custom adapter's admit, run, finish keeps the reported count (no status needed)."""
    from tenantkit.types import RequestInfo

    kit = make(quota_tokens_per_minute=50_000)
    request = RequestInfo(
        method="POST", path=CHAT, headers={k.lower(): v for k, v in key_for(kit).items()}
    )
    admission = kit.admit(request, body())
    admission.context.meter.used = 50
    kit.finish(admission)
    assert remaining_tokens(kit, "acme", 50_000) == 50_000 - 50


@pytest.mark.parametrize("adapter", ["asgi", "wsgi"])
@pytest.mark.parametrize(
    ("values", "used"), [(("junk", "40"), None), (("40", "junk"), 40), (("40", "70"), 40)]
)
async def test_a_repeated_token_header_settles_alike_on_both_adapters(
    make: Callable[..., Any], adapter: str, values: tuple[str, str], used: int | None
) -> None:
    """The token header given twice: its first line decides on ASGI and WSGI alike (junk: none)."""
    kit = make(quota_tokens_per_minute=50_000)
    lines = [(TOKEN_HEADER, value) for value in values]
    if adapter == "wsgi":

        def wsgi(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
            start_response("200 OK", lines)
            return [b"ok"]

        result, started = wsgi_call(kit, wsgi, key_for(kit))
        list(result)
        result.close()
        assert TOKEN_HEADER not in dict(started[0][1])
    else:
        start = {**START, "headers": [(n.lower().encode(), v.encode()) for n, v in lines]}
        sent = await call(kit, replying(start, LAST), key_for(kit))
        assert TOKEN_HEADER.lower().encode() not in dict(sent[0]["headers"])
    expected = 50_000 - (ESTIMATE if used is None else used)
    assert remaining_tokens(kit, "acme", 50_000) == expected


def reporting(used: int, *replies: Message, fail: bool = False) -> Callable[..., Any]:
    """An app that reports ``used`` tokens, sends ``replies``, then raises if ``fail``."""
    reply = replying(*replies)

    async def app(scope: Any, receive: Any, send: Any) -> None:
        context.report_tokens(used)
        await reply(scope, receive, send)
        if fail:
            raise RuntimeError("the stream broke")

    return app


@pytest.mark.parametrize(
    ("app", "raises"),
    [
        (reporting(3_000, START, PART), False),  # the client left mid-stream
        (reporting(3_000, START, PART, fail=True), True),  # the stream broke mid-body
        (reporting(3_000, fail=True), True),  # the app raised before starting
        (reporting(3_000, START, {**LAST, "more_body": False}), False),
    ],
    ids=["left-mid-body", "raised-mid-body", "raised-unstarted", "whole"],
)
async def test_a_reported_count_is_charged_even_if_the_response_fails(
    make: Callable[..., Any], app: Any, raises: bool
) -> None:
    """Tokens the app reported were used: an unfinished response settles to them, not to 0
    (else a client could stream a completion and leave before its last chunk, for free)."""
    kit = make(quota_tokens_per_minute=50_000)
    if raises:
        with pytest.raises(RuntimeError):
            await call(kit, app, key_for(kit))
    else:
        await call(kit, app, key_for(kit))
    assert remaining_tokens(kit, "acme", 50_000) == 50_000 - 3_000
