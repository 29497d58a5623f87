"""Request bodies: read JSON once, check it against a small declarative spec.

One spec serves both the check (422 naming every bad field) and the JSON
Schema that ``/openapi.json`` publishes, so the two cannot drift apart.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

from starlette.requests import Request

from tenantkit.errors import BadRequest, PayloadTooLarge, UnprocessableEntity

Kind = Literal["string", "integer", "number", "boolean", "object", "array", "any"]

EMAIL_PATTERN = (
    r"^[^@\s]{1,64}@[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?(?:\.[A-Za-z0-9-]{1,63})+$"
)
_UNSTORABLE = "must not contain NUL characters or unpaired surrogates"
_SURROGATE = re.compile("[\ud800-\udfff]")
_NOT_BLANK = r"\S"
_NOT_BLANK_RE = re.compile(_NOT_BLANK)
# ASCII only: str.isdigit() also takes "²" (which int() refuses) and "٣" (which it reads as 3).
_DIGITS = re.compile("[0-9]{1,18}")
_RFC3339 = re.compile(
    r"[0-9]{4}-[0-9]{2}-[0-9]{2}[Tt][0-9]{2}:[0-9]{2}:[0-9]{2}(\.[0-9]{1,9})?([Zz]|[+-][0-9]{2}:[0-9]{2})"
)
_TYPES: dict[str, tuple[type, ...]] = {
    "string": (str,),
    "integer": (int,),
    "number": (int, float),
    "boolean": (bool,),
    "object": (dict,),
    "array": (list,),
}


@dataclass(frozen=True)
class Field:
    """One JSON field: its type and constraints (a subset of JSON Schema)."""

    name: str
    kind: Kind
    required: bool = False
    nullable: bool = False
    description: str = ""
    min_length: int | None = None
    max_length: int | None = None
    pattern: str | None = None
    enum: tuple[str, ...] | None = None
    minimum: int | None = None
    maximum: int | None = None
    items: Field | None = None
    max_items: int | None = None
    fields: tuple[Field, ...] | None = None
    any_of: tuple[Field, ...] | None = None
    lower: bool = False
    #: A string must hold more than whitespace (a title or a name of only spaces is none).
    not_blank: bool = False

    def schema(self) -> dict[str, Any]:
        """Return this field's JSON Schema."""
        if self.any_of is not None:
            options = [f.schema() for f in self.any_of]
            out: dict[str, Any] = {
                "anyOf": [*options, {"type": "null"}] if self.nullable else options
            }
        elif self.kind == "any":
            out = {}
        else:
            out = {"type": [self.kind, "null"] if self.nullable else self.kind}
        for key, value in (
            ("minLength", self.min_length),
            ("maxLength", self.max_length),
            ("pattern", self.pattern or (_NOT_BLANK if self.not_blank else None)),
            ("minimum", self.minimum),
            ("maximum", self.maximum),
            ("maxItems", self.max_items),
        ):
            if value is not None:
                out[key] = value
        if self.enum is not None:
            out["enum"] = [*self.enum, None] if self.nullable else list(self.enum)
        if self.items is not None:
            out["items"] = self.items.schema()
        if self.fields is not None:
            out.update(Body(self.fields).schema())
        if self.description:
            out["description"] = self.description
        return out

    def check(self, value: Any, path: str, errors: list[dict[str, str]]) -> Any:
        """Return the cleaned value, or append ``{"field", "message"}`` errors."""
        if value is None:
            if not self.nullable:
                errors.append({"field": path, "message": "must not be null"})
            return None
        if self.any_of is not None:
            for option in self.any_of:
                trial: list[dict[str, str]] = []
                cleaned = option.check(value, path, trial)
                if not trial:
                    return cleaned
            errors.append({"field": path, "message": "matches none of the allowed shapes"})
            return None
        if self.kind == "any":
            return value
        expected = _TYPES[self.kind]
        if not isinstance(value, expected) or (
            self.kind in ("integer", "number") and isinstance(value, bool)
        ):
            errors.append({"field": path, "message": f"must be a {self.kind}"})
            return None
        checked: Any = value  # isinstance against a tuple of types narrows to object
        if self.kind == "string":
            return self._check_string(checked, path, errors)
        if self.kind in ("integer", "number"):
            return self._check_integer(checked, path, errors)
        if self.kind == "array":
            return self._check_array(checked, path, errors)
        if self.kind == "object" and self.fields is not None:
            return Body(self.fields).clean(checked, errors, prefix=f"{path}.")
        return value

    def _check_string(self, value: str, path: str, errors: list[dict[str, str]]) -> str | None:
        # Check what is stored: some characters grow when lower-cased ("İ" → "i̇").
        value = value.lower() if self.lower else value
        if self.min_length is not None and len(value) < self.min_length:
            errors.append({"field": path, "message": f"must be at least {self.min_length} long"})
        elif self.max_length is not None and len(value) > self.max_length:
            errors.append({"field": path, "message": f"must be at most {self.max_length} long"})
        elif self.not_blank and _NOT_BLANK_RE.search(value) is None:
            errors.append({"field": path, "message": "must not be blank"})
        elif self.pattern is not None and _full_match(self.pattern, value) is None:
            errors.append({"field": path, "message": f"must match {self.pattern}"})
        elif self.enum is not None and value not in self.enum:
            errors.append({"field": path, "message": f"must be one of {', '.join(self.enum)}"})
        else:
            return value
        return None

    def _check_integer(self, value: float, path: str, errors: list[dict[str, str]]) -> float | None:
        if self.minimum is not None and value < self.minimum:
            errors.append({"field": path, "message": f"must be at least {self.minimum}"})
        elif self.maximum is not None and value > self.maximum:
            errors.append({"field": path, "message": f"must be at most {self.maximum}"})
        else:
            return value
        return None

    def _check_array(self, value: list[Any], path: str, errors: list[dict[str, str]]) -> Any:
        if self.max_items is not None and len(value) > self.max_items:
            errors.append({"field": path, "message": f"must hold at most {self.max_items} items"})
            return None
        if self.min_length is not None and len(value) < self.min_length:
            errors.append({"field": path, "message": f"must hold at least {self.min_length} item"})
            return None
        if self.items is None:
            return value
        return [self.items.check(item, f"{path}[{i}]", errors) for i, item in enumerate(value)]


@dataclass(frozen=True)
class Body:
    """A JSON object body: its fields; unknown fields are refused (typos surface)."""

    fields: tuple[Field, ...]
    min_fields: int = 0
    extra: dict[str, Any] = field(default_factory=dict)

    def schema(self) -> dict[str, Any]:
        """Return the object's JSON Schema."""
        out: dict[str, Any] = {
            "type": "object",
            "properties": {f.name: f.schema() for f in self.fields},
            "additionalProperties": False,
        }
        required = [f.name for f in self.fields if f.required]
        if required:
            out["required"] = required
        if self.min_fields:
            out["minProperties"] = self.min_fields
        return out

    def parse(self, data: Mapping[str, Any]) -> dict[str, Any]:
        """Return the cleaned fields that were given, or raise 422 naming each bad one."""
        errors: list[dict[str, str]] = []
        cleaned = self.clean(data, errors)
        if not errors and len(cleaned) < self.min_fields:
            names = ", ".join(f.name for f in self.fields)
            errors.append({"field": "body", "message": f"give at least one of {names}"})
        if errors:
            raise invalid(errors)
        return cleaned

    def clean(
        self, data: Mapping[str, Any], errors: list[dict[str, str]], *, prefix: str = ""
    ) -> dict[str, Any]:
        """Check ``data`` field by field, appending errors; return the cleaned values."""
        known = {f.name: f for f in self.fields}
        for name in data:
            if name not in known:
                errors.append({"field": prefix + str(name), "message": "unknown field"})
        cleaned: dict[str, Any] = {}
        for spec in self.fields:
            if spec.name in data:
                cleaned[spec.name] = spec.check(data[spec.name], prefix + spec.name, errors)
            elif spec.required:
                errors.append({"field": prefix + spec.name, "message": "is required"})
        return cleaned


def _full_match(pattern: str, value: str) -> re.Match[str] | None:
    # JSON Schema patterns are anchored with ^...$; Python's $ also matches before a
    # trailing newline, so match the whole string instead.
    return re.fullmatch(pattern.removeprefix("^").removesuffix("$"), value)


def invalid(errors: Sequence[Mapping[str, str]]) -> UnprocessableEntity:
    """Return the 422 error naming every bad field."""
    fields = list(dict.fromkeys(e["field"] for e in errors))
    detail = "; ".join(f"{e['field']} {e['message']}" for e in errors)
    return UnprocessableEntity(detail, errors=list(errors), fields=fields)


async def read_json(request: Request, *, max_bytes: int) -> dict[str, Any]:
    """Read the body as one JSON object: 413 over ``max_bytes``, 400 if malformed."""
    length = request.headers.get("content-length")
    if length is not None and _DIGITS.fullmatch(length) and int(length) > max_bytes:
        raise PayloadTooLarge(f"the body exceeds {max_bytes} bytes", limit=max_bytes)
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > max_bytes:
            raise PayloadTooLarge(f"the body exceeds {max_bytes} bytes", limit=max_bytes)
        chunks.append(chunk)
    raw = b"".join(chunks)
    if not raw.strip():
        raise BadRequest("the request body is empty; send a JSON object")
    try:
        value = json.loads(raw, parse_constant=_not_json)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BadRequest(f"malformed JSON: {exc}") from exc
    except ValueError as exc:  # NaN or Infinity
        raise BadRequest(f"malformed JSON: {exc}") from exc
    except RecursionError as exc:
        raise BadRequest("malformed JSON: nested too deeply") from exc
    if not isinstance(value, dict):
        raise BadRequest("the request body must be a JSON object")
    errors: list[dict[str, str]] = []
    _check_text(value, "", errors)
    if errors:
        raise invalid(errors)
    return value


def _not_json(name: str) -> Any:
    # Python's json reads NaN and Infinity; RFC 8259 has no such values.
    raise ValueError(f"{name} is not a JSON value")


def _check_text(value: Any, path: str, errors: list[dict[str, str]]) -> None:
    """Name every string holding a NUL or an unpaired surrogate (valid JSON, not storable)."""
    if isinstance(value, str):
        if _unstorable(value):
            errors.append({"field": path or "body", "message": _UNSTORABLE})
    elif isinstance(value, dict):
        for key, item in value.items():
            name = f"{path}.{key}" if path else str(key)
            if _unstorable(key):
                errors.append({"field": path or "body", "message": f"a key {_UNSTORABLE}"})
            else:
                _check_text(item, name, errors)
    elif isinstance(value, list):
        for i, item in enumerate(value):
            _check_text(item, f"{path}[{i}]", errors)


def _unstorable(text: str) -> bool:
    # PostgreSQL refuses NUL in text, and no UTF-8 encoder takes a lone surrogate.
    return "\x00" in text or _SURROGATE.search(text) is not None


def query_int(request: Request, name: str, default: int, *, low: int, high: int) -> int:
    """Return an integer query parameter in ``low..high``, or raise 422 naming it."""
    raw = request.query_params.get(name)
    if raw is None:
        return default
    if not _DIGITS.fullmatch(raw) or not low <= int(raw) <= high:
        raise invalid([{"field": name, "message": f"must be an integer from {low} to {high}"}])
    return int(raw)


def query_choice(request: Request, name: str, choices: Sequence[str]) -> str | None:
    """Return a query parameter that must be one of ``choices`` (422 otherwise)."""
    raw = request.query_params.get(name)
    if raw is not None and raw not in choices:
        raise invalid([{"field": name, "message": f"must be one of {', '.join(choices)}"}])
    return raw


def query_time(request: Request, name: str) -> datetime | None:
    """Return an RFC 3339 query parameter as an aware UTC time (422 if malformed)."""
    raw = request.query_params.get(name)
    if raw is None:
        return None
    value: datetime | None = None
    if _RFC3339.fullmatch(raw):
        # fromisoformat takes at most microseconds; a longer fraction is cut, not refused.
        head, dot, rest = raw.upper().partition(".")
        if dot:
            digits = len(rest) - len(rest.lstrip("0123456789"))
            rest = rest[: min(digits, 6)] + rest[digits:]
        try:
            value = datetime.fromisoformat((head + dot + rest).replace("Z", "+00:00"))
            value = value.astimezone(UTC)
        except (ValueError, OverflowError):  # Feb 30, or a year past 9999 once in UTC
            value = None
    if value is None:
        raise invalid(
            [{"field": name, "message": "must be an RFC 3339 time, e.g. 2024-01-15T10:00:00Z"}]
        )
    return value


def query_text(request: Request, name: str, *, max_length: int = 200) -> str | None:
    """Return a free-text query parameter of bounded length (422 if too long)."""
    raw = request.query_params.get(name)
    if raw is not None and (not raw or len(raw) > max_length):
        raise invalid([{"field": name, "message": f"must be 1 to {max_length} characters"}])
    if raw is not None and _unstorable(raw):
        raise invalid([{"field": name, "message": _UNSTORABLE}])
    return raw


def email_field(name: str = "email", *, required: bool = True, nullable: bool = False) -> Field:
    """Return the spec of an email address field (stored lower-case)."""
    return Field(
        name,
        "string",
        required=required,
        nullable=nullable,
        max_length=254,
        pattern=EMAIL_PATTERN,
        lower=True,
        description="an email address",
    )
