"""Rate-limit header syntax: IETF draft-10 structured fields, OpenAI-style and legacy."""

from __future__ import annotations

import re

import pytest

from tenantkit._ratelimit_headers import UNKNOWN, HeaderRenderer, duration
from tenantkit.errors import QuotaExceeded
from tenantkit.quotas import Limit, QuotaEngine
from tenantkit.settings import QuotaSettings

KEY = re.compile(r"[a-z*][a-z0-9_\-.*]*")
INTEGER = re.compile(r"-?[0-9]{1,15}")
STRING = re.compile(r'"((?:[^"\\\x00-\x1f\x7f]|\\["\\])*)"')
TOKEN = re.compile(r"[A-Za-z*][!#$%&'*+\-.^_`|~0-9A-Za-z:/]*")

Item = tuple[object, dict[str, object]]


def _bare(text: str, pos: int) -> tuple[object, int]:
    for pattern, convert in ((STRING, None), (INTEGER, int), (TOKEN, str)):
        match = pattern.match(text, pos)
        if match:
            value = match.group(1) if convert is None else convert(match.group(0))
            return value, match.end()
    raise AssertionError(f"no bare item at {pos} in {text!r}")


def parse_sf_list(text: str) -> list[Item]:
    """A strict RFC 8941 parser for a List of Items (no inner lists, as these fields use)."""
    items: list[Item] = []
    pos = 0
    while True:
        value, pos = _bare(text, pos)
        params: dict[str, object] = {}
        while pos < len(text) and text[pos] == ";":
            pos += 1
            while text[pos] == " ":
                pos += 1
            key = KEY.match(text, pos)
            assert key, f"bad parameter key at {pos} in {text!r}"
            pos = key.end()
            param: object = True
            if pos < len(text) and text[pos] == "=":
                param, pos = _bare(text, pos + 1)
            assert key.group(0) not in params
            params[key.group(0)] = param
        items.append((value, params))
        if pos == len(text):
            return items
        match = re.compile(r"[ \t]*,[ \t]*").match(text, pos)
        assert match and match.end() < len(text), f"bad separator at {pos} in {text!r}"
        pos = match.end()


REQUESTS = Limit("tenant-requests", "{t}:requests", "requests", 100)
KEY_REQUESTS = Limit("key-requests", "{t}:key:k:requests", "requests", 10)
TOKENS = Limit("tenant-tokens", "{t}:tokens", "tokens", 50_000)
LIMITS = [REQUESTS, KEY_REQUESTS, TOKENS]


def test_policy_field_syntax() -> None:
    """RateLimit-Policy is a List of named items with q, w and a unit; tokens use a vendor key."""
    headers = dict(HeaderRenderer().render(LIMITS, [99, 9, 49_000], [1, 6, 2]))
    items = parse_sf_list(headers["RateLimit-Policy"])
    assert items == [
        ("tenant-requests", {"q": 100, "w": 60, "qu": "requests"}),
        ("key-requests", {"q": 10, "w": 60, "qu": "requests"}),
        ("tenant-tokens", {"q": 50_000, "w": 60, "tk-unit": "tokens"}),
    ]


def test_ratelimit_field_syntax() -> None:
    """RateLimit names each policy with r (remaining) and t (seconds to full)."""
    headers = dict(HeaderRenderer().render(LIMITS, [99, 9, 49_000], [1, 6, 2]))
    assert parse_sf_list(headers["RateLimit"]) == [
        ("tenant-requests", {"r": 99, "t": 1}),
        ("key-requests", {"r": 9, "t": 6}),
        ("tenant-tokens", {"r": 49_000, "t": 2}),
    ]


def test_optional_dialects_are_off_by_default() -> None:
    """Without opting in, only the IETF fields are sent."""
    names = {name for name, _ in HeaderRenderer().render(LIMITS, [1, 2, 3], [4, 5, 6])}
    assert names == {"RateLimit-Policy", "RateLimit"}


def test_openai_headers_use_the_tightest_limit_per_unit() -> None:
    """x-ratelimit-* report the limit with least remaining for requests and for tokens."""
    headers = dict(HeaderRenderer(openai=True).render(LIMITS, [99, 9, 49_000], [1, 65, 2]))
    assert headers["x-ratelimit-limit-requests"] == "10"
    assert headers["x-ratelimit-remaining-requests"] == "9"
    assert headers["x-ratelimit-reset-requests"] == "1m5s"
    assert headers["x-ratelimit-limit-tokens"] == "50000"
    assert headers["x-ratelimit-remaining-tokens"] == "49000"
    assert headers["x-ratelimit-reset-tokens"] == "2s"


def test_legacy_headers_prefer_request_limits() -> None:
    """X-RateLimit-* describe the tightest request limit, reset in delta seconds."""
    headers = dict(HeaderRenderer(legacy=True).render(LIMITS, [99, 9, 0], [1, 6, 60]))
    assert headers["X-RateLimit-Limit"] == "10"
    assert headers["X-RateLimit-Remaining"] == "9"
    assert headers["X-RateLimit-Reset"] == "6"
    only_tokens = dict(HeaderRenderer(legacy=True).render([TOKENS], [5], [7]))
    assert only_tokens["X-RateLimit-Limit"] == "50000"


def test_unknown_state_is_left_out() -> None:
    """Without a known state (fail_open) only the policy is advertised."""
    headers = dict(
        HeaderRenderer(openai=True, legacy=True).render(LIMITS, [UNKNOWN] * 3, [UNKNOWN] * 3)
    )
    assert set(headers) == {"RateLimit-Policy"}


@pytest.mark.parametrize(
    ("seconds", "text"), [(0, "0s"), (1, "1s"), (59, "59s"), (60, "1m0s"), (125, "2m5s")]
)
def test_duration(seconds: int, text: str) -> None:
    """Resets are formatted like OpenAI's: 45s, 1m5s."""
    assert duration(seconds) == text


def test_429_headers_parse() -> None:
    """A 429 carries a whole-second Retry-After and parseable rate-limit fields."""
    now = [0.0]
    engine = QuotaEngine(QuotaSettings(), clock=lambda: now[0])
    engine.acquire([TOKENS], tokens=50_000)
    with pytest.raises(QuotaExceeded) as caught:
        engine.acquire([TOKENS], tokens=600)
    headers = caught.value.headers
    assert re.fullmatch(r"[1-9][0-9]*", headers["Retry-After"])
    assert headers["Retry-After"] == "1"  # 600 tokens at 833⅓ a second
    assert parse_sf_list(headers["RateLimit"]) == [("tenant-tokens", {"r": 0, "t": 60})]
    parse_sf_list(headers["RateLimit-Policy"])
