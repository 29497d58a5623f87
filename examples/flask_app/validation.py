"""Request validation: one declaration per body or query, read by the views and by OpenAPI.

A ``Schema`` checks a decoded JSON object (or a query string) and returns the
clean values; every failing field is named in one 422 problem document. The
same declaration renders as the JSON Schema in ``/openapi.json``, so the
documentation cannot drift from what the server accepts.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import Any, Literal

from tenantkit.errors import BadRequest, UnprocessableEntity

Kind = Literal["string", "integer", "number", "boolean", "array", "object"]
EMAIL = re.compile(r"^[A-Za-z0-9.!#$%&'*+/=?^_`{|}~-]+@([A-Za-z0-9-]+\.)+[A-Za-z]{2,63}$")
DOMAIN = re.compile(r"^([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?\.)+[a-z]{2,63}$")
SLUG = r"^[a-z0-9][a-z0-9-]{1,62}$"
_MISSING: Any = object()


@dataclass(frozen=True, slots=True)
class Field:
    """One field: its JSON type and the rules a value must follow."""

    name: str
    kind: Kind
    required: bool = False
    nullable: bool = False
    description: str = ""
    enum: tuple[str, ...] | None = None
    pattern: str | None = None
    format: Literal["email", "hostname", "date-or-time"] | None = None
    min_length: int | None = None
    max_length: int | None = None
    minimum: float | None = None
    maximum: float | None = None
    max_items: int | None = None
    items: Field | Schema | None = None
    default: Any = _MISSING

    def check(self, value: Any, where: str, errors: list[dict[str, str]]) -> Any:
        """Return the clean value, or append the problem to ``errors`` and return ``None``."""
        if value is None:
            if not self.nullable:
                errors.append(_error(where, "must not be null"))
            return None
        checker = _CHECKERS[self.kind]
        return checker(self, value, where, errors)

    def json_schema(self) -> dict[str, Any]:
        """Return this field as JSON Schema (OpenAPI 3.1)."""
        out: dict[str, Any] = {"type": [self.kind, "null"] if self.nullable else self.kind}
        for key, value in (
            ("description", self.description or None),
            ("enum", list(self.enum) if self.enum else None),
            ("pattern", self.pattern),
            ("minLength", self.min_length),
            ("maxLength", self.max_length),
            ("minimum", self.minimum),
            ("maximum", self.maximum),
            ("maxItems", self.max_items),
        ):
            if value is not None:
                out[key] = value
        if self.format == "email":
            out["format"] = "email"
        elif self.format == "hostname":
            out["format"] = "hostname"
        elif self.format == "date-or-time":
            out["format"] = "date-time"
            out["description"] = (self.description + " " if self.description else "") + (
                "YYYY-MM-DD or an RFC 3339 time"
            )
        if self.items is not None:
            out["items"] = self.items.json_schema()
        if self.default is not _MISSING:
            out["default"] = self.default
        return out


@dataclass(frozen=True, slots=True)
class Schema:
    """A JSON object (or query string) made of named fields; unknown keys are refused."""

    name: str
    fields: tuple[Field, ...]
    description: str = ""
    allow_extra: bool = False
    by_name: dict[str, Field] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "by_name", {f.name: f for f in self.fields})

    def check(self, value: Any, where: str = "", errors: list[dict[str, str]] | None = None) -> Any:
        """Return the clean object; raise 422 naming every bad field (at the top level)."""
        top = errors is None
        errs: list[dict[str, str]] = [] if errors is None else errors
        prefix = f"{where}." if where else ""
        if not isinstance(value, Mapping):
            errs.append(_error(where or "body", "must be a JSON object"))
            clean: dict[str, Any] | None = None
        else:
            clean = {}
            if not self.allow_extra:
                for key in value:
                    if key not in self.by_name:
                        errs.append(_error(f"{prefix}{key}", "is not a known field"))
            for f in self.fields:
                if f.name in value:
                    clean[f.name] = f.check(value[f.name], prefix + f.name, errs)
                elif f.required:
                    errs.append(_error(prefix + f.name, "is required"))
                elif f.default is not _MISSING:
                    clean[f.name] = f.default
        if top and errs:
            first = errs[0]["field"]
            raise UnprocessableEntity(
                f"{len(errs)} invalid field(s): "
                + "; ".join(f"{e['field']} {e['message']}" for e in errs[:5]),
                field=first,
                errors=errs,
            )
        return clean

    def parse_query(self, args: Mapping[str, str]) -> dict[str, Any]:
        """Coerce query-string values to the declared kinds, then check them."""
        raw: dict[str, Any] = {}
        errors: list[dict[str, str]] = []
        for key, text in args.items():
            f = self.by_name.get(key)
            if f is None:
                continue  # unknown query parameters are ignored, as HTTP caches expect
            raw[key] = _coerce(f, text, errors)
        if errors:
            raise UnprocessableEntity(
                "; ".join(f"{e['field']} {e['message']}" for e in errors),
                field=errors[0]["field"],
                errors=errors,
            )
        result: dict[str, Any] = self.check(raw)
        return result

    def json_schema(self) -> dict[str, Any]:
        """Return this object as JSON Schema."""
        out: dict[str, Any] = {
            "type": "object",
            "properties": {f.name: f.json_schema() for f in self.fields},
            "additionalProperties": self.allow_extra,
        }
        required = [f.name for f in self.fields if f.required]
        if required:
            out["required"] = required
        if self.description:
            out["description"] = self.description
        return out


def parse_json(raw: bytes) -> Any:
    """Decode a request body as JSON or raise 400 (malformed) — never a 500."""
    if not raw.strip():
        raise BadRequest("the request body is empty; send a JSON object")
    try:
        return json.loads(raw.decode("utf-8"), parse_constant=_refuse_constant)
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError, ValueError) as exc:
        raise BadRequest(f"malformed JSON: {exc}") from exc


def parse_moment(value: str, *, end_of_day: bool = False) -> datetime:
    """Parse ``YYYY-MM-DD`` or an RFC 3339 time to an aware UTC datetime (``ValueError`` if bad).

    With ``end_of_day`` a bare date gives the next midnight (an exclusive end).
    """
    text = value.strip()
    if len(text) == 10:
        day = date.fromisoformat(text)
        moment = datetime(day.year, day.month, day.day, tzinfo=UTC)
        if not end_of_day:
            return moment
        try:
            return moment + timedelta(days=1)
        except OverflowError:
            raise ValueError("the day after is past the calendar") from None
    parsed = datetime.fromisoformat(text.replace("Z", "+00:00"))
    if parsed.tzinfo is None:
        raise ValueError("a time needs a UTC offset (e.g. 'Z')")
    try:
        return parsed.astimezone(UTC)
    except OverflowError:
        raise ValueError("the time in UTC is outside the calendar") from None


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def _error(where: str, message: str) -> dict[str, str]:
    return {"field": where, "message": message}


def _coerce(f: Field, text: str, errors: list[dict[str, str]]) -> Any:
    if f.kind == "integer":
        if not re.fullmatch(r"-?\d{1,18}", text):
            errors.append(_error(f.name, "must be an integer"))
            return None
        return int(text)
    if f.kind == "boolean":
        if text.lower() not in ("true", "false", "1", "0"):
            errors.append(_error(f.name, "must be true or false"))
            return None
        return text.lower() in ("true", "1")
    return text


def _check_string(f: Field, value: Any, where: str, errors: list[dict[str, str]]) -> Any:
    if not isinstance(value, str):
        errors.append(_error(where, "must be a string"))
        return None
    problem = _string_problem(f, value)
    if problem is not None:
        errors.append(_error(where, problem))
        return None
    return value.lower() if f.format in ("email", "hostname") else value


def _string_problem(f: Field, value: str) -> str | None:
    """Return what is wrong with a string value, or ``None``."""
    if "\x00" in value:
        return "must not contain NUL characters"
    if not value.isascii():
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:  # an unpaired surrogate (JSON "\\ud800"): no database stores it
            return "must not contain unpaired surrogates"
    if f.min_length is not None and len(value) < f.min_length:
        return f"must be at least {f.min_length} characters"
    if f.max_length is not None and len(value) > f.max_length:
        return f"must be at most {f.max_length} characters"
    if f.enum is not None and value not in f.enum:
        return f"must be one of {list(f.enum)}"
    if f.pattern is not None and re.fullmatch(f.pattern.strip("^$"), value) is None:
        return f"must match {f.pattern}"
    if f.format == "email" and EMAIL.fullmatch(value) is None:
        return "must be an email address"
    if f.format == "hostname" and DOMAIN.fullmatch(value.lower()) is None:
        return "must be a domain name such as example.com"
    if f.format == "date-or-time":
        try:
            parse_moment(value, end_of_day=True)
        except ValueError:
            return "must be YYYY-MM-DD or an RFC 3339 time"
    return None


def _check_number(f: Field, value: Any, where: str, errors: list[dict[str, str]]) -> Any:
    integer = f.kind == "integer"
    if isinstance(value, bool) or not isinstance(value, int | float):
        errors.append(_error(where, f"must be {'an integer' if integer else 'a number'}"))
        return None
    if integer and not isinstance(value, int):
        if not (math.isfinite(value) and value.is_integer()):
            errors.append(_error(where, "must be an integer"))
            return None
        value = int(value)
    if not integer and not math.isfinite(value):
        errors.append(_error(where, "must be a finite number"))
        return None
    if f.minimum is not None and value < f.minimum:
        errors.append(_error(where, f"must be at least {_num(f.minimum)}"))
        return None
    if f.maximum is not None and value > f.maximum:
        errors.append(_error(where, f"must be at most {_num(f.maximum)}"))
        return None
    return value


def _check_boolean(f: Field, value: Any, where: str, errors: list[dict[str, str]]) -> Any:
    if not isinstance(value, bool):
        errors.append(_error(where, "must be true or false"))
        return None
    return value


def _check_array(f: Field, value: Any, where: str, errors: list[dict[str, str]]) -> Any:
    if not isinstance(value, list):
        errors.append(_error(where, "must be an array"))
        return None
    if f.max_items is not None and len(value) > f.max_items:
        errors.append(_error(where, f"must hold at most {f.max_items} items"))
        return None
    if f.items is None:
        return list(value)
    return [f.items.check(item, f"{where}[{i}]", errors) for i, item in enumerate(value)]


def _check_object(f: Field, value: Any, where: str, errors: list[dict[str, str]]) -> Any:
    if not isinstance(value, dict) or not all(isinstance(k, str) for k in value):
        errors.append(_error(where, "must be a JSON object"))
        return None
    if f.max_items is not None and len(value) > f.max_items:
        errors.append(_error(where, f"must hold at most {f.max_items} keys"))
        return None
    return dict(value)


def _num(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else str(value)


_CHECKERS = {
    "string": _check_string,
    "integer": _check_number,
    "number": _check_number,
    "boolean": _check_boolean,
    "array": _check_array,
    "object": _check_object,
}
