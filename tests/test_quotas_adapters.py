"""Quotas and policy through the ASGI and WSGI adapters: what a client actually sees."""

from __future__ import annotations

import asyncio
import io
import json
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from tenantkit import context
from tenantkit.asgi import TenantKitMiddleware
from tenantkit.quotas import Limit, QuotaEngine
from tenantkit.settings import QuotaSettings
from tenantkit.wsgi import TenantKitWSGIMiddleware

CHAT = "/api/chat/completions"
TOKEN_HEADER = "X-TenantKit-Tokens-Used"


class FakeClock:
    def __init__(self) -> None:
        self.now = 1_000.0

    def __call__(self) -> float:
        return self.now


def body(
    model: str = "gpt-4o-mini", tools: list[str] | None = None, max_tokens: int = 100
) -> bytes:
    doc: dict[str, Any] = {
        "model": model,
        "messages": [{"role": "user", "content": "hi"}],
        "max_tokens": max_tokens,
    }
    if tools is not None:
        doc["tools"] = [{"type": "function", "function": {"name": t}} for t in tools]
    return json.dumps(doc).encode()


ESTIMATE = 1 + 4 + 100  # "hi" → 1 token, 4 for the message, max_tokens 100


def remaining_tokens(kit: Any, tenant_id: str, per_minute: int) -> int:
    """Read the tenant's token bucket without charging it."""
    probe = Limit("tenant-tokens", f"{{{tenant_id}}}:tokens", "tokens", per_minute)
    return int(kit.quotas.acquire([probe], tokens=0).remaining[0])


# -- apps -------------------------------------------------------------------------------


async def asgi_chat(request: Request) -> Response:
    doc = json.loads(await request.body())
    reported = request.headers.get("x-report")
    headers = {TOKEN_HEADER: reported} if reported else {}
    status = int(request.headers.get("x-status", "200"))
    return JSONResponse({"model": doc["model"]}, status_code=status, headers=headers)


async def asgi_boom(request: Request) -> Response:
    await request.body()
    raise RuntimeError("the model backend failed")


def wsgi_app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
    raw = environ["wsgi.input"].read(int(environ.get("CONTENT_LENGTH") or 0))
    if environ["PATH_INFO"] == "/boom/api/chat/completions":
        raise RuntimeError("the model backend failed")
    headers = [("Content-Type", "application/json")]
    if environ.get("HTTP_X_REPORT"):
        headers.append((TOKEN_HEADER, environ["HTTP_X_REPORT"]))
    start_response(f"{environ.get('HTTP_X_STATUS', '200')} Status", headers)
    return [json.dumps({"model": json.loads(raw)["model"]}).encode()]


def asgi_client(kit: Any) -> httpx.AsyncClient:
    app = Starlette(
        routes=[
            Route(CHAT, asgi_chat, methods=["POST"]),
            Route("/boom" + CHAT, asgi_boom, methods=["POST"]),
        ]
    )
    transport = httpx.ASGITransport(app=TenantKitMiddleware(app, kit), raise_app_exceptions=False)
    return httpx.AsyncClient(transport=transport, base_url="http://test")


def wsgi_client(kit: Any) -> httpx.Client:
    transport = httpx.WSGITransport(app=TenantKitWSGIMiddleware(wsgi_app, kit))
    return httpx.Client(transport=transport, base_url="http://test")


Send = Callable[..., httpx.Response]


@pytest.fixture(params=["asgi", "wsgi"])
def adapter(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def make(make_kit: Callable[..., Any], clock: FakeClock) -> Callable[..., Any]:
    """A kit whose tenant ``acme`` has the given fields, on memory quotas with a fake clock."""

    def build(**tenant: Any) -> Any:
        kit = make_kit(
            tenants={"acme": tenant},
            policy_paths=(CHAT, "/boom" + CHAT),
            quota=QuotaSettings(openai_headers=True),
        )
        kit.quotas = QuotaEngine(kit.settings.quota, clock=clock)
        return kit

    return build


@pytest.fixture
def send(adapter: str) -> Iterator[Callable[..., httpx.Response]]:
    """POST through the chosen adapter (the ASGI one on a private event loop)."""
    loop = asyncio.new_event_loop()

    def post(kit: Any, path: str, payload: bytes, **headers: str) -> httpx.Response:
        if adapter == "wsgi":
            with wsgi_client(kit) as client:
                return client.post(path, content=payload, headers=headers)

        async def go() -> httpx.Response:
            async with asgi_client(kit) as client:
                return await client.post(path, content=payload, headers=headers)

        return loop.run_until_complete(go())

    yield post
    loop.close()


def key_for(kit: Any, **limits: Any) -> dict[str, str]:
    issued = kit.api_keys.issue("acme", name="test", **limits)
    return {"X-API-Key": issued.key, "Content-Type": "application/json"}


# -- policy -----------------------------------------------------------------------------


def test_model_not_allowed_is_403(make: Callable[..., Any], send: Send) -> None:
    """A disallowed model is a 403 problem naming it, with no Retry-After and no quota spent."""
    kit = make(allowed_models=["gpt-4o-mini"], quota_requests_per_minute=10)
    headers = key_for(kit)
    denied = send(kit, CHAT, body("gpt-4o"), **headers)
    assert denied.status_code == 403
    assert denied.headers["content-type"] == "application/problem+json"
    assert "retry-after" not in denied.headers
    assert denied.json()["reason"] == "model_not_allowed"
    assert denied.json()["model"] == "gpt-4o"
    # The route is limited: its limits are named, their state (nothing was read) is not.
    assert denied.headers["ratelimit-policy"] == '"tenant-requests";q=10;w=60;qu="requests"'
    assert "ratelimit" not in denied.headers
    admitted = send(kit, CHAT, body("gpt-4o-mini"), **headers)
    assert admitted.status_code == 200
    assert admitted.headers["x-ratelimit-remaining-requests"] == "9"


def test_tool_not_allowed_is_403(make: Callable[..., Any], send: Send) -> None:
    """A disallowed tool is a 403 naming the tool."""
    kit = make(allowed_tools=["search"])
    denied = send(kit, CHAT, body(tools=["search", "shell"]), **key_for(kit))
    assert denied.status_code == 403
    assert denied.json()["reason"] == "tool_not_allowed"
    assert denied.json()["tool"] == "shell"


def test_empty_allow_list_allows_nothing(make: Callable[..., Any], send: Send) -> None:
    """allowed_models [] refuses every model; null allows any."""
    strict = make(allowed_models=[])
    assert send(strict, CHAT, body(), **key_for(strict)).status_code == 403
    open_ = make(allowed_models=None)
    assert send(open_, CHAT, body("any-model"), **key_for(open_)).status_code == 200


def test_malformed_tools_are_422(make: Callable[..., Any], send: Send) -> None:
    """A tools field of the wrong shape is a 422 naming it, never a 500."""
    kit = make(allowed_tools=["search"])
    payload = json.dumps({"model": "m", "tools": "search"}).encode()
    response = send(kit, CHAT, payload, **key_for(kit))
    assert response.status_code == 422
    assert response.json()["errors"][0]["field"] == "tools"


def test_a_422_names_every_bad_field_and_spends_nothing(
    make: Callable[..., Any], send: Send
) -> None:
    """Several bad fields: one 422 listing each, and the request quota is untouched."""
    kit = make(allowed_models=["m"], allowed_tools=["search"], quota_requests_per_minute=10)
    headers = key_for(kit)
    payload = json.dumps({"model": 1, "tools": [{"function": 2}], "max_tokens": 1.5}).encode()
    response = send(kit, CHAT, payload, **headers)
    assert response.status_code == 422
    assert response.headers["content-type"] == "application/problem+json"
    fields = [error["field"] for error in response.json()["errors"]]
    assert fields == ["model", "tools[0].function", "max_tokens"]
    admitted = send(kit, CHAT, body("m"), **headers)
    assert admitted.headers["x-ratelimit-remaining-requests"] == "9"


@pytest.mark.parametrize(
    "payload",
    [
        b'{"model": "gpt-4o", "model": "gpt-4o-mini", "messages": []}',
        b'{"model": "gpt-4o-mini", "temperature": NaN}',
        b'{"model": "gpt-4o-mini", "max_tokens": Infinity}',
        b'{"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "\xed\xa0\x80"}]}',
        b'{"model": "gpt-4o-mini", "user": "\\ud800"}',
    ],
    ids=["name-twice", "nan", "infinity", "raw-surrogate", "escaped-lone-surrogate"],
)
def test_ambiguous_json_is_400_and_spends_nothing(
    make: Callable[..., Any], send: Send, payload: bytes
) -> None:
    """JSON a downstream parser could read otherwise is a 400 problem, with no quota spent."""
    kit = make(allowed_models=["gpt-4o-mini"], quota_requests_per_minute=10)
    headers = key_for(kit)
    refused = send(kit, CHAT, payload, **headers)
    assert refused.status_code == 400, refused.text
    assert refused.headers["content-type"] == "application/problem+json"
    assert "malformed JSON" in refused.json()["detail"]
    admitted = send(kit, CHAT, body("gpt-4o-mini"), **headers)
    assert admitted.status_code == 200
    assert admitted.headers["x-ratelimit-remaining-requests"] == "9"


# -- quotas -----------------------------------------------------------------------------


def test_429_through_the_adapter(make: Callable[..., Any], send: Send) -> None:
    """Over the key's limit: 429 with Retry-After, rate-limit headers and the limit named."""
    kit = make(quota_requests_per_minute=10)
    headers = key_for(kit, rate_limit=2)
    for _ in range(2):
        assert send(kit, CHAT, body(), **headers).status_code == 200
    refused = send(kit, CHAT, body(), **headers)
    assert refused.status_code == 429
    assert refused.headers["retry-after"] == "30"
    assert refused.json()["limit"] == "key-requests"
    assert refused.json()["retry_after"] == 30
    assert '"key-requests";r=0;t=60' in refused.headers["ratelimit"]
    assert '"tenant-requests";r=8;' in refused.headers["ratelimit"]


def test_admitted_responses_carry_headers(make: Callable[..., Any], send: Send) -> None:
    """Every admitted response of a limited route carries RateLimit-Policy and RateLimit."""
    kit = make(quota_requests_per_minute=10, quota_tokens_per_minute=50_000)
    response = send(kit, CHAT, body(), **key_for(kit))
    assert response.headers["ratelimit-policy"].startswith('"tenant-requests";q=10;w=60')
    assert f'"tenant-tokens";r={50_000 - ESTIMATE};' in response.headers["ratelimit"]


def test_token_header_settles_and_is_stripped(make: Callable[..., Any], send: Send) -> None:
    """The app's token header settles the reservation and never reaches the client."""
    kit = make(quota_tokens_per_minute=50_000)
    response = send(kit, CHAT, body(), **key_for(kit), **{"X-Report": "40"})
    assert response.status_code == 200
    assert TOKEN_HEADER.lower() not in response.headers
    assert remaining_tokens(kit, "acme", 50_000) == 50_000 - 40


def test_app_error_releases_the_reservation(
    make: Callable[..., Any], send: Send, adapter: str
) -> None:
    """When the app raises, the token reservation is given back."""
    kit = make(quota_tokens_per_minute=50_000)
    if adapter == "wsgi":
        # A WSGI server turns the exception into its own 500; httpx re-raises it.
        with pytest.raises(RuntimeError):
            send(kit, "/boom" + CHAT, body(), **key_for(kit))
    else:
        assert send(kit, "/boom" + CHAT, body(), **key_for(kit)).status_code == 500
    assert remaining_tokens(kit, "acme", 50_000) == 50_000


@pytest.mark.parametrize(
    ("status", "report", "spent"),
    [
        ("200", None, ESTIMATE),  # a success the app did not count: the estimate stands
        ("422", None, 0),  # the app's own refusal used no tokens it told of: released
        ("429", None, 0),  # say, its upstream's rate limit
        ("307", None, 0),  # a redirect served no completion
        ("422", "40", 40),  # a count reported is charged, whatever the status
    ],
)
def test_a_response_other_than_a_success_without_a_count_releases_the_reservation(
    make: Callable[..., Any], send: Send, status: str, report: str | None, spent: int
) -> None:
    """Only a 2xx keeps an unreported estimate; any other answer gives it back."""
    kit = make(quota_tokens_per_minute=50_000)
    headers = {"X-Status": status, **({"X-Report": report} if report else {})}
    response = send(kit, CHAT, body(), **key_for(kit), **headers)
    assert response.status_code == int(status)
    assert remaining_tokens(kit, "acme", 50_000) == 50_000 - spent


@pytest.mark.parametrize("on_failure", ["fail_closed", "fail_open"])
def test_quota_storage_down(make_kit: Callable[..., Any], send: Send, on_failure: str) -> None:
    """Redis unreachable: 503 with Retry-After (fail_closed) or 200 (fail_open), never 500."""
    quota = QuotaSettings(storage_uri="redis://127.0.0.1:1/0", on_failure=on_failure)  # type: ignore[arg-type]
    kit = make_kit(
        tenants={"acme": {"quota_requests_per_minute": 5}}, policy_paths=(CHAT,), quota=quota
    )
    response = send(kit, CHAT, body(), **key_for(kit))
    if on_failure == "fail_closed":
        assert response.status_code == 503
        assert response.headers["retry-after"] == "1"
        assert response.json()["reason"] == "quota_storage_unavailable"
        assert response.headers["ratelimit-policy"].startswith('"tenant-requests";q=5;')
        assert "ratelimit" not in response.headers
    else:
        assert response.status_code == 200
    assert kit.health()["quota_storage"] == "error"


# -- cancellation (ASGI) ----------------------------------------------------------------


@pytest.mark.parametrize("backend", ["memory", pytest.param("redis", marks=pytest.mark.redis)])
def test_cancelled_requests_release_every_reservation(
    request: pytest.FixtureRequest, make: Callable[..., Any], backend: str
) -> None:
    """100 in-flight ASGI requests cancelled mid-handler give every token back."""
    per_minute = 12_000  # 10,500 reserved in flight; a full refill takes 52 s
    kit = make(quota_tokens_per_minute=per_minute)
    if backend == "redis":
        url = request.getfixturevalue("redis_url")
        prefix = request.getfixturevalue("redis_prefix")
        # A generous timeout: 100 cold connections at once must not turn into 503s
        # on a loaded machine; this test is about releasing, not about timeouts.
        settings = QuotaSettings(storage_uri=url, timeout_seconds=2.0)
        kit.quotas = QuotaEngine(settings, key_prefix=prefix)
    headers = key_for(kit)
    payload = body()
    entered: list[int] = []

    async def hang(req: Request) -> Response:
        await req.body()
        entered.append(1)
        await asyncio.Event().wait()
        raise AssertionError("unreachable")

    app = TenantKitMiddleware(Starlette(routes=[Route(CHAT, hang, methods=["POST"])]), kit)
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
        "headers": [(k.lower().encode(), v.encode()) for k, v in headers.items()]
        + [(b"content-length", str(len(payload)).encode())],
        "client": ("127.0.0.1", 5000),
        "server": ("test", 80),
    }

    async def one() -> None:
        delivered = False

        async def receive() -> dict[str, Any]:
            nonlocal delivered
            if not delivered:
                delivered = True
                return {"type": "http.request", "body": payload, "more_body": False}
            await asyncio.Event().wait()
            raise AssertionError("unreachable")

        async def send(message: dict[str, Any]) -> None:
            raise AssertionError(f"nothing may be sent: {message['type']}")

        await app(dict(scope), receive, send)

    async def run() -> tuple[int, int]:
        tasks = [asyncio.create_task(one()) for _ in range(100)]
        for _ in range(10_000):
            if len(entered) == 100:
                break
            await asyncio.sleep(0.001)
        probe = [Limit("tenant-tokens", "{acme}:tokens", "tokens", per_minute)]
        try:
            during = await kit.quotas.acquire_async(probe, tokens=0)
            for task in tasks:
                task.cancel()
            results = await asyncio.gather(*tasks, return_exceptions=True)
            assert [r for r in results if not isinstance(r, asyncio.CancelledError)] == []
            await kit.quotas.drain()  # on Redis the releases run as background tasks
            after = await kit.quotas.acquire_async(probe, tokens=0)
        finally:
            await kit.quotas.aclose()
        return int(during.remaining[0]), int(after.remaining[0])

    during, after = asyncio.run(run())
    assert len(entered) == 100
    # Memory runs on a frozen clock; Redis refills 200 tokens a second meanwhile.
    assert during <= per_minute - 100 * ESTIMATE + (0 if backend == "memory" else 2_000)
    assert after == per_minute
    assert context.get_context() is None


# -- the WSGI response lifecycle --------------------------------------------------------


WSGIApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]


def wsgi_call(
    kit: Any, wsgi: WSGIApp, headers: dict[str, str]
) -> tuple[Any, list[tuple[str, list[tuple[str, str]]]]]:
    """Call the WSGI middleware as a server does; return the response iterable, unread,
    and the ``(status, headers)`` each start_response call was given."""
    payload = body()
    environ: dict[str, Any] = {
        "REQUEST_METHOD": "POST",
        "PATH_INFO": CHAT,
        "CONTENT_TYPE": "application/json",
        "CONTENT_LENGTH": str(len(payload)),
        "wsgi.input": io.BytesIO(payload),
        "wsgi.url_scheme": "http",
    }
    for name, value in headers.items():
        environ["HTTP_" + name.upper().replace("-", "_")] = value
    started: list[tuple[str, list[tuple[str, str]]]] = []

    def start_response(status: str, head: list[tuple[str, str]], exc_info: Any = None) -> Any:
        started.append((status, head))
        return lambda data: None

    return TenantKitWSGIMiddleware(wsgi, kit)(environ, start_response), started


def _unstarted(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
    return [b"never started"]


def _listed(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"a", b"b"]


def _streamed(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
    start_response("200 OK", [("Content-Type", "text/plain")])
    return (chunk for chunk in (b"a", b"b", b"c"))


def _started_late(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterator[bytes]:
    start_response("200 OK", [("Content-Type", "text/plain")])  # on the first next()
    yield b"a"
    yield b"b"


@pytest.mark.parametrize(
    ("wsgi", "reads", "failed"),
    [
        (_unstarted, None, True),  # read to the end, but start_response was never called
        (_listed, 0, True),  # closed before the list was iterated (client gone)
        (_listed, 1, True),
        (_streamed, 1, True),  # a stream closed mid-body
        (_started_late, 1, True),
        (_listed, None, False),  # read to the end: the reservation is kept
        (_streamed, None, False),
        (_started_late, None, False),
    ],
)
def test_wsgi_response_never_started_or_completed_releases_tokens(
    make: Callable[..., Any], wsgi: WSGIApp, reads: int | None, failed: bool
) -> None:
    """A WSGI response that never started, or was closed before its end, refunds its tokens."""
    kit = make(quota_tokens_per_minute=50_000)
    seen: list[bool] = []
    finish = kit.finish

    def spy(admission: Any, *, failed: bool = False) -> None:
        seen.append(failed)
        finish(admission, failed=failed)

    kit.finish = spy
    result, _ = wsgi_call(kit, wsgi, key_for(kit))
    chunks = iter(result)
    for _ in range(reads if reads is not None else 1_000):
        if next(chunks, None) is None:
            break
    result.close()
    assert seen == [failed]
    expected = 50_000 if failed else 50_000 - ESTIMATE
    assert remaining_tokens(kit, "acme", 50_000) == expected
    assert context.get_context() is None


class _CloseRaises:
    """A response body whose ``close()`` raises (a failing close callback, say)."""

    def __init__(self, chunks: list[bytes]) -> None:
        self.chunks = chunks

    def __iter__(self) -> Iterator[bytes]:
        return iter(self.chunks)

    def close(self) -> None:
        raise RuntimeError("close failed")


def _reporting_stream(
    environ: dict[str, Any], start_response: Callable[..., Any]
) -> Iterator[bytes]:
    start_response("200 OK", [("Content-Type", "text/event-stream")])
    for used in (1_000, 2_000, 3_000):
        context.report_tokens(used)
        yield b"data: chunk\n\n"


@pytest.mark.parametrize("reads", [0, 1, 3, None])
def test_wsgi_reported_tokens_are_charged_even_if_the_client_leaves(
    make: Callable[..., Any], reads: int | None
) -> None:
    """A stream closed before its end settles to the tokens reported so far, not to 0."""
    kit = make(quota_tokens_per_minute=50_000)
    result, _ = wsgi_call(kit, _reporting_stream, key_for(kit))
    chunks = iter(result)
    for _ in range(3 if reads is None else reads):
        next(chunks)
    if reads is None:
        assert list(chunks) == []
    result.close()
    charged = {0: 0, 1: 1_000, 3: 3_000, None: 3_000}[reads]  # 0: nothing reported, released
    assert remaining_tokens(kit, "acme", 50_000) == 50_000 - charged
    assert context.get_context() is None


@pytest.mark.parametrize(("reads", "failed"), [(None, False), (1, True)])
def test_wsgi_close_raising_after_the_whole_body_keeps_the_reservation(
    make: Callable[..., Any], reads: int | None, failed: bool
) -> None:
    """A body read to its end is settled even if its close() raises (as ASGI settles a
    response whose last chunk was sent); the error still propagates."""
    kit = make(quota_tokens_per_minute=50_000)

    def wsgi(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        start_response("200 OK", [("Content-Type", "text/plain")])
        return _CloseRaises([b"a", b"b"])

    result, _ = wsgi_call(kit, wsgi, key_for(kit))
    chunks = iter(result)
    for _ in range(reads if reads is not None else 1_000):
        if next(chunks, None) is None:
            break
    with pytest.raises(RuntimeError, match="close failed"):
        result.close()
    expected = 50_000 if failed else 50_000 - ESTIMATE
    assert remaining_tokens(kit, "acme", 50_000) == expected
    assert context.get_context() is None


def every_header_kit(make_kit: Callable[..., Any], clock: FakeClock) -> Any:
    """A kit with every header dialect on, tenant ``acme`` at 10 requests a minute."""
    kit = make_kit(
        tenants={"acme": {"quota_requests_per_minute": 10}},
        policy_paths=(CHAT,),
        quota=QuotaSettings(openai_headers=True, legacy_headers=True),
    )
    kit.quotas = QuotaEngine(kit.settings.quota, clock=clock)
    return kit


def test_wsgi_rate_limit_headers_replace_the_apps(
    make_kit: Callable[..., Any], clock: FakeClock
) -> None:
    """Rate-limit headers the app set are replaced by the middleware's, not duplicated;
    the app's other headers keep their order, the token header is still stripped."""
    kit = every_header_kit(make_kit, clock)
    app_headers = [
        ("Content-Type", "application/json"),
        ("X-RateLimit-Limit", "999"),
        ("X-Before", "1"),
        ("ratelimit", '"upstream";r=1;t=1'),
        ("RateLimit-Policy", '"upstream";q=1;w=1'),
        ("x-ratelimit-remaining-requests", "12345"),
        (TOKEN_HEADER, "7"),
        ("X-RateLimit-Upstream", "kept"),  # no header of the middleware's: kept
        ("X-After", "2"),
    ]

    def wsgi(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        start_response("200 OK", list(app_headers))
        return [b"{}"]

    result, started = wsgi_call(kit, wsgi, key_for(kit))
    b"".join(result)
    result.close()
    (_, headers) = started[0]
    ours = {name.lower() for name, value in headers if (name, value) not in app_headers}
    assert {"x-ratelimit-limit", "ratelimit", "ratelimit-policy"} < ours
    assert "x-ratelimit-remaining-requests" in ours
    names = [name.lower() for name, _ in headers]
    assert all(names.count(name) == 1 for name in ours), headers
    values = {name.lower(): value for name, value in headers}
    assert values["x-ratelimit-limit"] == "10"
    assert values["x-ratelimit-remaining-requests"] == "9"
    assert "upstream" not in values["ratelimit"] + values["ratelimit-policy"]
    assert [pair for pair in headers if pair in app_headers] == [
        ("Content-Type", "application/json"),
        ("X-Before", "1"),
        ("X-RateLimit-Upstream", "kept"),
        ("X-After", "2"),
    ]
    assert names[-1] == "x-request-id"
