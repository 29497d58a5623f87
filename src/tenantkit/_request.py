"""Small request helpers shared by the pipeline and every adapter."""

from __future__ import annotations

import json
import os
import re
import sys
import zlib
from collections.abc import Iterable, Mapping
from json.scanner import make_scanner
from typing import Any

from .errors import (
    PROBLEM_CONTENT_TYPE,
    BadRequest,
    HTTPError,
    PayloadTooLarge,
    UnsupportedMediaType,
)
from .types import Decision

_SANE_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:\-]{1,128}$")
# More digits than this is past any body limit or token count (and int64).
_MAX_DIGITS = 18
_SURROGATE = re.compile("[\ud800-\udfff]")


def _is_decimal(value: str) -> bool:
    """Return whether ``value`` is one or more ASCII digits (a regex fullmatch costs more)."""
    # isascii(): str.isdigit() alone also accepts "²" and "٣", which int() refuses or reads.
    return value.isascii() and value.isdigit()


def _unique_object(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """An object's members as a dict; a name given twice is refused, not last-wins."""
    made = dict(pairs)
    if len(made) != len(pairs):
        seen: set[str] = set()
        for name, _ in pairs:
            if name in seen:
                raise ValueError(f"the member name {name[:40]!r} appears twice")
            seen.add(name)
    return made


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


# Stricter than json.loads, which the app behind may not be: a body the allow-lists
# and a downstream parser could read differently (a name twice, NaN, lone
# surrogates) is refused rather than guessed at.
_DECODER = json.JSONDecoder(object_pairs_hook=_unique_object, parse_constant=_no_constant)
# json builds its own scanner from the decoder alike (typeshed types the argument as a scanner).
_SCAN = make_scanner(_DECODER)  # type: ignore[arg-type]
_JSON_WHITESPACE = " \t\n\r"


def _decode_object(text: str) -> Any:
    """``_DECODER.decode(text)`` for a text opening with ``{``: the same value or error.

    It calls the C scanner directly; ``decode`` and ``raw_decode`` are two Python
    wrappers around it that cost more than scanning a small body.
    """
    try:
        value, end = _SCAN(text, 0)
    except StopIteration as exc:  # a value missing inside, turned into raw_decode's error
        raise json.JSONDecodeError("Expecting value", text, exc.value) from None
    if end != len(text):
        rest = text[end:].lstrip(_JSON_WHITESPACE)
        if rest:
            raise json.JSONDecodeError("Extra data", text, len(text) - len(rest))
    return value


def request_id_from(value: str | None) -> str:
    """Echo a client's request id when it is sane, else generate one."""
    if value is not None and _SANE_REQUEST_ID.fullmatch(value):
        return value
    return os.urandom(16).hex()  # as unique as a uuid4, a few times cheaper


def path_matches(path: str, prefixes: Iterable[str]) -> bool:
    """Return whether ``path`` equals a prefix or lies below it by whole segments.

    ``/health`` matches ``/health`` and ``/health/db``, never ``/healthz``;
    ``/`` matches the root path only (it is no wildcard). A final newline is
    ignored, as routers do whose patterns end in ``$`` (Starlette's): they run
    ``/api/chat/completions`` for ``/api/chat/completions%0A``, so the policy
    must see that route too.
    """
    if path[-1:] == "\n":
        path = path[:-1]
    for prefix in prefixes:
        base = prefix.rstrip("/")
        if base == "":
            if path == "/":
                return True
        elif path == base or path.startswith(base + "/"):
            return True
    return False


# The request content codings the policy can read through, as zlib's wbits.
_CODINGS = {"gzip": 31, "x-gzip": 31, "deflate": 15}
ACCEPTED_ENCODINGS = "gzip, deflate"


def decode_body(body: bytes, coding: str | None, limit: int) -> bytes:
    """Undo a request's ``Content-Encoding`` so the policy reads the JSON it carries.

    ``gzip`` (``x-gzip``) and ``deflate`` (zlib) are inflated to at most ``limit``
    bytes (413 beyond: a small body must not inflate without bound); ``identity``
    or none is the body itself. Any other coding, or more than one, is a 415
    naming those accepted; a body that is not what it says is a 400. The app is
    still given the body as sent.
    """
    if not coding:
        return body
    layers = [name for name in coding.replace(" ", "").lower().split(",") if name != "identity"]
    if not layers:
        return body
    wbits = _CODINGS.get(layers[0]) if len(layers) == 1 else None
    if wbits is None:
        raise UnsupportedMediaType(
            f"the body's content coding {coding[:40]!r} is not supported; use {ACCEPTED_ENCODINGS}",
            headers={"Accept-Encoding": ACCEPTED_ENCODINGS},
        )
    chunks: list[bytes] = []
    size = 0
    while True:  # a gzip body may hold several members, one after another
        inflater = zlib.decompressobj(wbits)
        try:
            chunk = inflater.decompress(body, limit + 1 - size)
        except zlib.error as exc:
            raise BadRequest(f"the body is not valid {layers[0]}: {exc}") from exc
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge(f"the decoded body exceeds {limit} bytes", limit=limit)
        chunks.append(chunk)
        if not inflater.eof:
            raise BadRequest(f"the body is not valid {layers[0]}: it is truncated")
        body = inflater.unused_data
        if not body:
            return b"".join(chunks)
        if wbits != 31:
            raise BadRequest(f"the body is not valid {layers[0]}: data follows its end")


def parse_json_object(body: bytes) -> Mapping[str, Any]:
    """Decode a JSON object body or raise ``BadRequest`` (400)."""
    if not body:
        raise BadRequest("request body is empty; a JSON object is required")
    try:
        if body[:1] == b"{" and (len(body) < 2 or body[1]):
            # json.detect_encoding reads this body as UTF-8: skip its pure-Python sniffing.
            text = body.decode("utf-8")
            value = _decode_object(text)
        else:
            text = body.decode(json.detect_encoding(body))
            value = _DECODER.decode(text)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BadRequest(f"malformed JSON: {exc}") from exc
    except ValueError as exc:  # a name twice, NaN, or an integer past int()'s digit limit
        raise BadRequest(f"malformed JSON: {exc}") from exc
    except RecursionError as exc:  # a hostile body nested deeper than the parser's stack
        raise BadRequest("malformed JSON: nested too deeply") from exc
    if not isinstance(value, dict):
        raise BadRequest("the request body must be a JSON object")
    # Strict UTF-8 refuses raw surrogates; only an escape can still make a lone one.
    if "\\u" in text and _has_surrogate(value):
        raise BadRequest("malformed JSON: a string holds a lone surrogate (\\uD800-\\uDFFF)")
    return value


def _has_surrogate(value: object) -> bool:
    """Return whether any string (or member name) in a parsed value is not valid Unicode."""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            if _SURROGATE.search(item):
                return True
        elif isinstance(item, dict):
            stack.extend(item)
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return False


def problem_decision(exc: HTTPError, *, instance: str | None = None) -> Decision:
    """Render an ``HTTPError`` as a rejection ``Decision`` (the default ``on_reject``)."""
    return Decision(
        status=exc.status,
        problem=exc.to_problem(instance),
        headers=tuple(exc.headers.items()),
    )


def problem_bytes(decision: Decision) -> bytes:
    """Serialise a decision's problem document."""
    return json.dumps(decision.problem, separators=(",", ":"), default=str).encode()


PROBLEM_HEADERS = (("content-type", PROBLEM_CONTENT_TYPE),)


def parse_reported_tokens(value: str, current: int | None) -> int | None:
    """Read the tokens an app reported in the token header; ignore a malformed value.

    A count reported with ``report_tokens()`` wins over the header.
    """
    if current is not None:
        return current
    value = value.strip()
    if not _is_decimal(value) or len(value) > _MAX_DIGITS:
        return None
    return int(value)


def content_length(value: str | None) -> int | None:
    """Return a Content-Length value, ``None`` if absent or not a plain decimal number.

    A number of more digits than any sane length reads as ``sys.maxsize``.
    """
    if value is None:
        return None
    value = value.strip()
    if not _is_decimal(value):
        return None
    digits = value.lstrip("0") or "0"
    return int(digits) if len(digits) <= _MAX_DIGITS else sys.maxsize
