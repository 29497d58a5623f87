"""Small request helpers shared by the pipeline and every adapter."""

from __future__ import annotations

import json
import os
import re
import sys
from collections.abc import Iterable, Mapping
from typing import Any

from .errors import PROBLEM_CONTENT_TYPE, BadRequest, HTTPError
from .types import Decision

_SANE_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:\-]{1,128}$")
# ASCII only: str.isdigit() also accepts "²" and "٣", which int() refuses or reads.
_DECIMAL = re.compile(r"[0-9]+")
# More digits than this is past any body limit or token count (and int64).
_MAX_DIGITS = 18
_DECODER = json.JSONDecoder()


def request_id_from(value: str | None) -> str:
    """Echo a client's request id when it is sane, else generate one."""
    if value is not None and _SANE_REQUEST_ID.fullmatch(value):
        return value
    return os.urandom(16).hex()  # as unique as a uuid4, a few times cheaper


def path_matches(path: str, prefixes: Iterable[str]) -> bool:
    """Return whether ``path`` equals a prefix or lies below it by whole segments.

    ``/health`` matches ``/health`` and ``/health/db``, never ``/healthz``;
    ``/`` matches the root path only (it is no wildcard).
    """
    for prefix in prefixes:
        base = prefix.rstrip("/")
        if base == "":
            if path == "/":
                return True
        elif path == base or path.startswith(base + "/"):
            return True
    return False


def parse_json_object(body: bytes) -> Mapping[str, Any]:
    """Decode a JSON object body or raise ``BadRequest`` (400)."""
    if not body:
        raise BadRequest("request body is empty; a JSON object is required")
    try:
        if body[:1] == b"{" and (len(body) < 2 or body[1]):
            # What json.loads(bytes) does for a body json.detect_encoding reads as
            # UTF-8, without that pure-Python sniffing: the usual request body.
            value = _DECODER.decode(body.decode("utf-8", "surrogatepass"))
        else:
            value = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BadRequest(f"malformed JSON: {exc}") from exc
    except ValueError as exc:  # an integer past int()'s digit limit
        raise BadRequest("malformed JSON: a number has too many digits") from exc
    except RecursionError as exc:  # a hostile body nested deeper than the parser's stack
        raise BadRequest("malformed JSON: nested too deeply") from exc
    if not isinstance(value, dict):
        raise BadRequest("the request body must be a JSON object")
    return value


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
    if not _DECIMAL.fullmatch(value) or len(value) > _MAX_DIGITS:
        return None
    return int(value)


def content_length(value: str | None) -> int | None:
    """Return a Content-Length value, ``None`` if absent or not a plain decimal number.

    A number of more digits than any sane length reads as ``sys.maxsize``.
    """
    if value is None:
        return None
    value = value.strip()
    if not _DECIMAL.fullmatch(value):
        return None
    digits = value.lstrip("0") or "0"
    return int(digits) if len(digits) <= _MAX_DIGITS else sys.maxsize
