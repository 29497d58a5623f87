"""The request pipeline's shortcuts answer exactly as the long way round.

Cached API-key identities, the table-driven key checksum, memoized path
decisions and precomputed rate-limit header parts must never change an answer.
"""

from __future__ import annotations

import json
import zlib
from dataclasses import replace
from datetime import timedelta
from decimal import Decimal
from typing import Any

import anyio
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st
from starlette.datastructures import MutableHeaders

from tenantkit._cache import _TTLMap
from tenantkit._db import make_engine
from tenantkit._keyformat import _PAIRS, _base62_int, _checksum, generate_key
from tenantkit._quota_limits import limit_set_for, limits_for
from tenantkit._ratelimit_headers import UNKNOWN, HeaderRenderer
from tenantkit._request import _DECODER, _decode_object, parse_json_object
from tenantkit.apikeys import MISS, APIKeyStore
from tenantkit.asgi import TenantKitMiddleware, _edit_headers
from tenantkit.errors import (
    BadRequest,
    HTTPError,
    PolicyDenied,
    Unauthorized,
    UnprocessableEntity,
    ValidationError,
)
from tenantkit.identity import HeaderResolver, PathResolver
from tenantkit.kit import TenantKit
from tenantkit.policy import _COMPACT_JSON, Policy, _compact_json, _unprocessable, tool_names
from tenantkit.settings import CacheSettings, Settings
from tenantkit.tenants import TenantStore
from tenantkit.types import Identity, RequestInfo, TenantConfig
from test_apikeys import SECRET, FakeNow
from test_review_support import FakeClock

# The base62 CRC of these strings covers 0, the pair boundaries and the largest CRC32.
CHECKSUM_SAMPLES = ["", "a", "tk_live_", "tk_test_" + "z" * 43, "0" * 1000]


@pytest.fixture
def store(tmp_path: Any) -> APIKeyStore:
    clock, now = FakeClock(), FakeNow()
    cache = CacheSettings(ttl_seconds=30.0, negative_ttl_seconds=5.0)
    engine = make_engine(f"sqlite:///{tmp_path}/keys.db")
    made = APIKeyStore(engine, secret=SECRET, cache=cache, clock=clock, now=now)
    made.create_all()
    made.fake_now = now  # type: ignore[attr-defined]
    return made


@pytest.mark.parametrize("number", [0, 1, 61, 62, 3843, 3844, 3844**2 - 1, 3844**2, 2**32 - 1])
def test_checksum_table_matches_base62(number: int) -> None:
    """The three-pair checksum encoding equals the digit-by-digit base62 encoding."""
    high, low = divmod(number, 3844)
    high, middle = divmod(high, 3844)
    assert _PAIRS[high] + _PAIRS[middle] + _PAIRS[low] == _base62_int(number, 6)


@pytest.mark.parametrize("body", CHECKSUM_SAMPLES + [generate_key()[:-6] for _ in range(20)])
def test_checksum_is_base62_crc32(body: str) -> None:
    """``_checksum`` is the 6-digit base62 CRC32 of the key body."""
    assert _checksum(body) == _base62_int(zlib.crc32(body.encode()), 6)


def test_verify_identity_equals_the_records_identity(store: APIKeyStore) -> None:
    """``verify_identity`` gives the identity ``verify(...).to_identity()`` gives, cached or not."""
    issued = store.issue("acme", name="ci", scopes=["read"], rate_limit=7, project_id="p1")
    store.clear_cache()
    first = store.verify_identity(issued.key)
    assert first == store.verify(issued.key).to_identity()
    assert store.verify_identity(issued.key) is first
    assert first.claims == {"project_id": "p1"}


def test_peek_identity_follows_peek(store: APIKeyStore) -> None:
    """``peek_identity`` is MISS, None or the identity when ``peek`` is MISS, None or a record."""
    key = store.issue("acme", name="ci").key
    store.clear_cache()
    assert store.peek_identity(key) is MISS
    assert store.peek_identity("garbage") is None
    store.verify(key)
    record = store.peek(key)
    assert record is not None and record is not MISS
    assert store.peek_identity(key) == record.to_identity()


def test_cached_identity_is_refused_once_revoked_or_expired(store: APIKeyStore) -> None:
    """A cached identity stops being handed out when its key is revoked or expires."""
    now: FakeNow = store.fake_now  # type: ignore[attr-defined]
    revoked = store.issue("acme", name="a")
    store.verify_identity(revoked.key)
    store.revoke("acme", revoked.record.id)
    with pytest.raises(Unauthorized):
        store.verify_identity(revoked.key)
    assert store.peek_identity(revoked.key) is None
    expiring = store.issue("acme", name="b", expires_at=now.now + timedelta(minutes=5))
    store.verify_identity(expiring.key)
    now.now += timedelta(minutes=5)
    with pytest.raises(Unauthorized):
        store.verify_identity(expiring.key)
    assert store.peek_identity(expiring.key) is None


def ttl_map(maxsize: int = 3, ttl: float = 10.0) -> tuple[_TTLMap[str, int], FakeClock]:
    clock = FakeClock()
    return _TTLMap(maxsize, ttl, clock), clock


def test_ttl_map_entry_lives_until_its_ttl_from_the_last_set() -> None:
    """An entry is alive strictly before ``set time + ttl``; a new set restarts it."""
    cache, clock = ttl_map()
    cache.set("a", 1)
    clock.now += 9.5
    assert cache.get("a") == 1 and "a" in cache
    cache.set("a", 2)
    clock.now += 9.5
    assert cache.get("a") == 2
    clock.now += 0.5
    assert cache.get("a") is None and "a" not in cache


def test_ttl_map_set_drops_expired_entries_before_evicting_live_ones() -> None:
    """When full, expired entries go first; only then the least recently used live one."""
    cache, clock = ttl_map(maxsize=2)
    cache.set("old", 1)
    clock.now += 6
    cache.set("b", 2)
    assert cache.get("old") == 1  # now the most recently used: "b" is the LRU entry
    clock.now += 5  # "old" has expired, "b" is alive
    cache.set("c", 3)
    assert cache.get("b") == 2 and cache.get("c") == 3
    assert len(cache) == 2


def test_ttl_map_get_refreshes_lru_but_contains_does_not() -> None:
    """A ``get`` hit makes an entry most recently used; ``in`` leaves the order alone."""
    cache, _ = ttl_map(maxsize=2)
    cache.set("a", 1)
    cache.set("b", 2)
    assert "a" in cache
    cache.set("c", 3)
    assert cache.get("a") is None
    cache.get("b")
    cache.set("d", 4)
    assert cache.get("b") == 2 and cache.get("c") is None


def test_tenant_store_refuses_malformed_ids_even_with_a_warm_cache(tmp_path: Any) -> None:
    """The lock-free hit path never answers for an id that fails validation."""
    store = TenantStore(make_engine(f"sqlite:///{tmp_path}/t.db"))
    store.create_all()
    store.create(id="acme")
    assert store.get("acme").id == "acme"
    for bad in ("ACME", " acme", "acme\n", 42):
        with pytest.raises(ValidationError):
            store.get(bad)  # type: ignore[arg-type]
        with pytest.raises(ValidationError):
            store.peek(bad)  # type: ignore[arg-type]


def mutable_headers_edit(
    headers: list[tuple[bytes, bytes]], extra: list[tuple[str, str]]
) -> tuple[list[tuple[bytes, bytes]], str | None]:
    """The header edit the ASGI middleware makes, spelled with ``MutableHeaders``.

    The app's own headers of the names the middleware adds are replaced, not doubled.
    """
    message: dict[str, Any] = {"type": "http.response.start", "headers": list(headers)}
    out = MutableHeaders(scope=message)
    reported = out.get("x-tokens-used")
    if reported is not None:
        del out["x-tokens-used"]
    for name in {name.lower() for name, _ in extra} - {"x-request-id"}:
        if name in out:
            del out[name]
    for name, value in extra:
        out.append(name, value)
    out["X-Request-ID"] = "rid"
    return message["headers"], reported


@pytest.mark.parametrize(
    "headers",
    [
        [],
        [(b"content-type", b"application/json")],
        [(b"x-tokens-used", b"12"), (b"content-length", b"2"), (b"x-tokens-used", b"13")],
        [(b"x-request-id", b"app"), (b"a", b"1"), (b"x-request-id", b"again"), (b"b", b"2")],
        [(b"a", b"1"), (b"x-tokens-used", b" 7 "), (b"x-request-id", b"app")],
        [(b"ratelimit", b"app"), (b"a", b"1"), (b"ratelimit", b"again")],
    ],
)
@pytest.mark.parametrize("extra", [[], [("RateLimit", "r=1"), ("X-Request-ID", "limit")]])
def test_edit_headers_matches_mutable_headers(
    headers: list[tuple[bytes, bytes]], extra: list[tuple[str, str]]
) -> None:
    """The one-pass header edit gives the headers and token value ``MutableHeaders`` gave."""
    message: dict[str, Any] = {"type": "http.response.start", "headers": list(headers)}
    encoded = [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in extra]
    reported = _edit_headers(message, b"x-tokens-used", encoded, (b"x-request-id", b"rid"))
    assert (message["headers"], reported) == mutable_headers_edit(headers, extra)


def header_kit(tmp_path: Any, **settings: Any) -> TenantKit:
    """A kit on a fresh SQLite file that takes the tenant from X-Tenant-ID, policy on /v1."""
    return TenantKit(
        Settings(
            database_url=f"sqlite:///{tmp_path}/k.db",
            resolvers=("header",),
            trust_tenant_header=True,
            require_credential=False,
            policy_paths=("/v1",),
            **settings,
        )
    )


def test_path_rules_follow_replaced_settings(tmp_path: Any) -> None:
    """Memoized path answers are recomputed when the kit's settings are replaced."""
    kit = header_kit(tmp_path, exclude_paths=("/health",))
    post = RequestInfo(method="POST", path="/v1/chat", headers={})
    assert kit.is_excluded("/health/db") and not kit.is_excluded("/healthz")
    assert kit.reads_body(post)
    assert not kit.reads_body(RequestInfo(method="GET", path="/v1/chat", headers={}))
    kit.settings = replace(kit.settings, exclude_paths=("/docs",), policy_paths=("/v2",))
    assert not kit.is_excluded("/health/db") and kit.is_excluded("/docs")
    assert not kit.reads_body(post)


def reference_parse(body: bytes) -> object:
    """json.loads(bytes), refusing what parse_json_object refuses on top of it.

    Invalid UTF-8 (json.loads lets surrogates through), a member name twice,
    NaN and Infinity, and strings holding a lone surrogate.
    """

    def unique(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        if len({name for name, _ in pairs}) != len(pairs):
            raise ValueError("duplicate")
        return dict(pairs)

    def no_constant(name: str) -> Any:
        raise ValueError(name)

    try:
        text = body.decode(json.detect_encoding(body))
        value = json.loads(text, object_pairs_hook=unique, parse_constant=no_constant)
        json.dumps(value, ensure_ascii=False).encode("utf-8")  # a lone surrogate fails here
    except (UnicodeError, json.JSONDecodeError, ValueError, RecursionError) as exc:
        return type(exc)
    return value


@pytest.mark.parametrize(
    "body",
    [
        b'{"model": "gpt-4o", "n": 1.5e3}',
        b"{}",
        b"{",
        b'{"a": "\\ud800"}',
        b'{"a": "\xed\xa0\x80"}',
        b'{"a": "\xff"}',
        b'{"caf\xc3\xa9": "\xe2\x82\xac"}',
        b"{\x00\x00\x00",
        '{"a": 1}'.encode("utf-16-le"),
        '{"a": 1}'.encode("utf-16"),
        b'\xef\xbb\xbf{"a": 1}',
        b' {"a": 1}',
        b'{"a": ' + b"9" * 5000 + b"}",
        b'{"model": "m2", "model": "m1"}',
        b'{"a": {"x": 1, "y": 2, "x": 3}}',
        b'{"a": [NaN]}',
        b'{"a": -Infinity}',
        b'{"a": "\\ud83d\\ude00 paired"}',
        b'{"a": "\\udE00 alone"}',
        b'{"\\ud800": 1}',
        b'{"a": "\\\\ud800 an escaped backslash"}',
        '{"a": "\ud83d\ude00"}'.encode("utf-16", "surrogatepass"),
        b'{"a": 1} \t\r\n',
        b'{"a": 1} x',
        b'{"a": 1}{}',
        b'{"a": 1}\xc2\xa0',
    ],
)
def test_json_fast_path_matches_json_loads(body: bytes) -> None:
    """A body parses to what strict json.loads gives, or fails where it fails."""
    expected = reference_parse(body)
    try:
        got: object = parse_json_object(body)
    except BadRequest:
        assert isinstance(expected, type) or not isinstance(expected, dict)
        return
    assert got == expected


def decoded(decode: Any, text: str) -> object:
    try:
        return decode(text)
    except ValueError as exc:
        return type(exc), str(exc)


@pytest.mark.parametrize(
    "text",
    [
        *["{}", '{"a": 1} \t\r\n', '{"a": 1} x', '{"a": 1}\n\n{}', '{"a": 1}\xa0', '{"a": 1'],
        *['{"a" 1}', '{"a": [1,]}', '{"a": {"b": }}', '{"a": 1, "a": 2}', '{"a": NaN}'],
        '{"a": {"b": [true, null, "\\u00e9", -1.5e3]}}',
    ],
)
def test_direct_scan_answers_as_the_decoder(text: str) -> None:
    """``_decode_object`` gives what ``_DECODER.decode`` gives: the same value or error message."""
    assert decoded(_decode_object, text) == decoded(_DECODER.decode, text)


@pytest.mark.parametrize(
    "value",
    [
        [{"type": "function", "function": {"name": "search", "parameters": {}}}],
        ["caf\u00e9", "\u20ac", "\ud800", 1.5, float("nan"), float("inf"), None, True, 10**30],
        [{"b": 1, "a": [1, 2, {"c": object.__name__}]}, ("tuple", 1)],
        [{1: "int key", 2.5: "float key", None: "null key"}],
    ],
)
def test_compact_json_matches_the_encoder(value: Any) -> None:
    """The shared C encoder writes exactly what ``_COMPACT_JSON.encode`` writes."""
    assert _compact_json(value) == _COMPACT_JSON.encode(value)


def test_compact_json_of_an_unknown_type_uses_str() -> None:
    """A value JSON cannot encode is written as its ``str``, as the encoder's default does."""
    value = [{"when": Decimal("1.50")}]
    assert _compact_json(value) == _COMPACT_JSON.encode(value) == '[{"when":"1.50"}]'


def test_compact_json_of_a_circular_value_raises_the_encoders_error() -> None:
    """A circular value raises the checking encoder's ValueError, not a RecursionError."""
    value: list[Any] = []
    value.append(value)
    with pytest.raises(ValueError, match="Circular reference"):
        _compact_json(value)


def test_hint_identities_are_reused_and_malformed_hints_still_fail() -> None:
    """A header hint gives an equal, reused identity; a malformed one is still a 400."""
    resolver = HeaderResolver()
    request = RequestInfo(method="GET", path="/", headers={"x-tenant-id": "acme"})
    first = resolver.resolve(request)
    assert first == Identity(tenant_id="acme", source="header")
    assert resolver.resolve(request) is first
    path_hint = PathResolver("/t").resolve(RequestInfo(method="GET", path="/t/acme/x", headers={}))
    assert path_hint == Identity(tenant_id="acme", source="path")
    for bad in ("ACME", "a b", "-acme"):
        bad_request = RequestInfo(method="GET", path="/", headers={"x-tenant-id": bad})
        for _ in range(2):
            with pytest.raises(BadRequest):
                resolver.resolve(bad_request)


# -- the limit set, the policy fast path, the API-key digest-first path, body replay ----------


def test_limit_set_renders_the_headers_plain_limits_render() -> None:
    """A LimitSet's precomputed header parts give what the limits' own fields give."""
    tenant = TenantConfig(
        id="acme", name="Acme", quota_requests_per_minute=100, quota_tokens_per_minute=50_000
    )
    who = Identity(
        tenant_id="acme",
        source="api_key",
        authenticated=True,
        api_key_id="k1",
        api_key_rate_limit=10,
        api_key_token_limit=900,
    )
    limit_set = limit_set_for(tenant, who)
    assert isinstance(limit_set, tuple) and list(limit_set) == limits_for(tenant, who)
    assert limit_set_for(tenant, who) is limit_set
    for renderer in (HeaderRenderer(), HeaderRenderer(openai=True, legacy=True)):
        for remaining, reset in (([99, 9, 49_000, 800], [1, 6, 2, 3]), ([UNKNOWN] * 4, [0] * 4)):
            assert renderer.render(limit_set, remaining, reset) == renderer.render(
                list(limit_set), remaining, reset
            )


def reference_policy_check(tenant: TenantConfig, body: Any) -> None:
    """The policy check without its fast paths: every shape error, then the model, then tools."""
    if not isinstance(body, dict):
        raise UnprocessableEntity("the request body must be a JSON object")
    errors: list[dict[str, str]] = []
    models = tenant.allowed_models
    model = body.get("model")
    if models is not None:
        if model is None:
            errors.append(
                {"field": "model", "message": "model is required: this tenant restricts models"}
            )
        elif not isinstance(model, str) or not model:
            errors.append({"field": "model", "message": "model must be a non-empty string"})
    names: list[str] = []
    if tenant.allowed_tools is not None:
        try:
            names = tool_names(body)
        except UnprocessableEntity as exc:
            errors.extend(exc.extra["errors"])
    if errors:
        raise _unprocessable(errors)
    if models is not None and model not in models:
        raise PolicyDenied(
            f"model {model!r} is not allowed for tenant {tenant.id!r}",
            reason="model_not_allowed",
            model=model,
        )
    for tool in names:
        if tenant.allowed_tools is not None and tool not in tenant.allowed_tools:
            raise PolicyDenied(
                f"tool {tool!r} is not allowed for tenant {tenant.id!r}",
                reason="tool_not_allowed",
                tool=tool,
            )


def _outcome(check: Any, tenant: TenantConfig, body: Any) -> Any:
    try:
        check(tenant, body)
    except HTTPError as exc:
        return exc.status, exc.to_problem()
    return None


NAMES = st.sampled_from(["search", "calc", "", "shell"]) | st.integers() | st.none()
TOOLS = st.one_of(
    st.sampled_from(["search", "shell", ""]),
    st.builds(lambda n: {"type": "function", "function": {"name": n}}, NAMES),
    st.builds(lambda n: {"name": n}, NAMES),
    st.builds(lambda t: {"type": t}, st.sampled_from(["function", "web_search", "search"])),
    st.builds(lambda f: {"function": f}, st.none() | st.integers() | st.just([])),
    st.integers(),
    st.none(),
)
BODIES = st.fixed_dictionaries(
    {},
    optional={
        "model": st.sampled_from(["gpt", "other", ""]) | st.integers() | st.none(),
        "tools": st.lists(TOOLS, max_size=3) | st.integers() | st.none() | st.just("x"),
        "functions": st.lists(TOOLS, max_size=2) | st.none(),
    },
)


@settings(max_examples=400, deadline=None, database=None)
@example(body={"tools": [{"function": {"name": ""}}]}, models=None, tools=("", "search"))
@example(body={"model": ""}, models=("", "gpt"), tools=None)
@example(body={"tools": [{"function": {"name": "search"}}], "functions": []}, models=(), tools=())
@given(
    body=BODIES,
    models=st.sampled_from([None, (), ("gpt",), ("", "gpt")]),
    tools=st.sampled_from(
        [None, (), ("search",), ("search", "calc", "web_search"), ("", "search")]
    ),
)
def test_policy_fast_path_answers_as_the_full_check(
    body: dict[str, Any], models: tuple[str, ...] | None, tools: tuple[str, ...] | None
) -> None:
    """Policy.check allows, denies or refuses exactly as the model-then-every-tool check does."""
    tenant = TenantConfig(id="acme", name="Acme", allowed_models=models, allowed_tools=tools)
    assert _outcome(Policy().check, tenant, body) == _outcome(reference_policy_check, tenant, body)


@pytest.mark.parametrize(
    "bad",
    [
        None,
        42,
        b"tk_live_",
        "",
        "tk_live_short",
        "tk_live_" + "\u00e9" * 49,  # the length of a key, not ASCII
        "tk_live_" + "a" * 49,  # the shape of a key, a wrong checksum
        "\ud800" * 57,
    ],
)
def test_malformed_keys_are_refused_with_a_warm_cache(store: APIKeyStore, bad: Any) -> None:
    """What cannot be a key is refused by peek and verify alike, the cache warm or not."""
    issued = store.issue("acme", name="ci")
    assert store.verify_identity(issued.key).tenant_id == "acme"
    for _ in range(2):
        assert store.peek_identity(bad) is None
        with pytest.raises(Unauthorized):
            store.verify_identity(bad)
    assert store.peek_identity(issued.key) == store.verify_identity(issued.key)


def test_an_unknown_well_formed_key_is_a_miss_then_cached_as_unknown(store: APIKeyStore) -> None:
    """A well-formed key nobody issued needs one store read, then is refused from the cache."""
    unknown = generate_key()
    assert store.peek_identity(unknown) is MISS
    with pytest.raises(Unauthorized):
        store.verify_identity(unknown)
    assert store.peek_identity(unknown) is None


def test_a_chunked_body_is_replayed_whole_then_the_disconnect(tmp_path: Any) -> None:
    """The app reads a body sent in chunks as the one body, then the disconnect that followed."""
    kit = header_kit(tmp_path)
    kit.create_all()
    kit.tenants.create(id="acme", name="Acme", allowed_models=["m"])
    seen: list[dict[str, Any]] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        for _ in range(2):
            seen.append(await receive())
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    chunks = [
        {"type": "http.request", "body": b'{"model":', "more_body": True},
        {"type": "http.request", "body": b'"m"}', "more_body": False},
        {"type": "http.disconnect"},
    ]

    async def receive() -> dict[str, Any]:
        return chunks.pop(0)

    async def send(message: dict[str, Any]) -> None:
        pass

    scope = {
        "type": "http",
        "method": "POST",
        "path": "/v1/chat",
        "headers": [(b"x-tenant-id", b"acme")],
        "query_string": b"",
    }
    anyio.run(TenantKitMiddleware(app, kit), scope, receive, send)
    assert seen == [
        {"type": "http.request", "body": b'{"model":"m"}', "more_body": False},
        {"type": "http.disconnect"},
    ]
