"""Which models are audited, how they are named, and what of their values is written.

A model is audited when ``__audit__`` says so (``audited`` sets it) or, by
default, when it is ``TenantScoped``. ``__audit_exclude__`` fields are left out
of ``changes``; secrets (fields named like password, secret, token, hash,
salt, credential, api key, private key) and ``__audit_redact__`` fields are
written as ``"[REDACTED]"`` so the entry still shows that they changed.
"""

from __future__ import annotations

import base64
import enum
import itertools
import math
import re
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import date, datetime, time, timedelta
from decimal import Decimal
from typing import Any, TypeVar, overload

from sqlalchemy.orm import Mapper

from .scoping import TenantScoped

T = TypeVar("T")

REDACTED = "[REDACTED]"
SECRET_WORDS = frozenset(
    {
        "password",
        "passwd",
        "passphrase",
        "secret",
        "token",
        "hash",
        "salt",
        "credential",
        "credentials",
        "apikey",
        "otp",
        "pin",
        "cvv",
        "ssn",
    }
)
SECRET_PAIRS = frozenset({("api", "key"), ("private", "key"), ("secret", "key")})
_CAMEL = re.compile(r"(?<=[a-z0-9])(?=[A-Z])")


@overload
def audited(cls: type[T], /) -> type[T]: ...


@overload
def audited(
    *,
    exclude: Iterable[str] = (),
    redact: Iterable[str] = (),
    resource_type: str | None = None,
) -> Callable[[type[T]], type[T]]: ...


def audited(
    cls: type[T] | None = None,
    /,
    *,
    exclude: Iterable[str] = (),
    redact: Iterable[str] = (),
    resource_type: str | None = None,
) -> type[T] | Callable[[type[T]], type[T]]:
    """Mark a mapped class as audited (usable bare or with options).

    ``exclude`` fields never appear in entries; ``redact`` fields appear as
    ``"[REDACTED]"``; ``resource_type`` replaces the default snake_case class name.
    """
    exclude_set, redact_set = frozenset(exclude), frozenset(redact)

    def mark(target: type[T]) -> type[T]:
        target.__audit__ = True  # type: ignore[attr-defined]
        if exclude_set:
            inherited = getattr(target, "__audit_exclude__", ())
            target.__audit_exclude__ = frozenset(inherited) | exclude_set  # type: ignore[attr-defined]
        if redact_set:
            inherited = getattr(target, "__audit_redact__", ())
            target.__audit_redact__ = frozenset(inherited) | redact_set  # type: ignore[attr-defined]
        if resource_type is not None:
            target.__audit_resource_type__ = resource_type  # type: ignore[attr-defined]
        return target

    return mark(cls) if cls is not None else mark


def is_audited(cls: type[Any]) -> bool:
    """Return whether changes to instances of ``cls`` are captured."""
    explicit = getattr(cls, "__audit__", None)
    if explicit is not None:
        return bool(explicit)
    return issubclass(cls, TenantScoped)


def resource_type_of(cls: type[Any]) -> str:
    """Return the resource type entries name: ``__audit_resource_type__`` or snake_case."""
    explicit = getattr(cls, "__audit_resource_type__", None)
    if isinstance(explicit, str):
        return explicit
    return _snake(cls.__name__)


def _snake(name: str) -> str:
    name = re.sub(r"([A-Z]+)([A-Z][a-z])", r"\1_\2", name)
    return _CAMEL.sub("_", name).lower()


def is_secret_name(name: str) -> bool:
    """Return whether a field name looks like it holds a secret."""
    words = [w for w in re.split(r"[_\W]+", _snake(name)) if w]
    if any(word in SECRET_WORDS for word in words):
        return True
    return any(pair in SECRET_PAIRS for pair in itertools.pairwise(words))


@dataclass(frozen=True, slots=True)
class CapturePolicy:
    """Install-wide options: extra fields to redact or leave out on every model."""

    redact: frozenset[str] = frozenset()
    exclude: frozenset[str] = frozenset()
    _cache: dict[Mapper[Any], list[tuple[str, bool]]] = field(
        default_factory=dict, compare=False, repr=False
    )

    def fields(self, mapper: Mapper[Any]) -> list[tuple[str, bool]]:
        """Return ``(attribute key, redacted)`` for the mapper's captured column attributes."""
        found = self._cache.get(mapper)
        if found is None:
            found = self._cache[mapper] = self._fields(mapper)
        return found

    def _fields(self, mapper: Mapper[Any]) -> list[tuple[str, bool]]:
        cls = mapper.class_
        exclude = self.exclude | frozenset(getattr(cls, "__audit_exclude__", ()))
        redact = self.redact | frozenset(getattr(cls, "__audit_redact__", ()))
        out: list[tuple[str, bool]] = []
        for prop in mapper.column_attrs:
            if prop.key in exclude:
                continue
            out.append((prop.key, prop.key in redact or is_secret_name(prop.key)))
        return out


def resource_id_of(mapper: Mapper[Any], pk: Iterable[Any]) -> str | None:
    """Render a primary key as the entry's resource id (``tenant_id`` left out)."""
    parts = [
        value
        for column, value in zip(mapper.primary_key, pk, strict=False)
        if column.key != "tenant_id"
    ]
    if not parts or any(value is None for value in parts):
        return None
    return ":".join(str(jsonable(value)) for value in parts)


def jsonable(value: Any) -> Any:
    """Convert a column value to plain JSON that reads back identically (for the hash)."""
    if value is None or isinstance(value, bool | int | str):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    if isinstance(value, enum.Enum):
        return jsonable(value.value)
    if isinstance(value, datetime | date | time):
        return value.isoformat()
    if isinstance(value, timedelta):
        return value.total_seconds()
    if isinstance(value, Decimal | uuid.UUID):
        return str(value)
    if isinstance(value, bytes | bytearray | memoryview):
        return "base64:" + base64.b64encode(bytes(value)).decode("ascii")
    if isinstance(value, Mapping):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        items = [jsonable(v) for v in value]
        return sorted(items, key=repr) if isinstance(value, set | frozenset) else items
    return str(value)


def diff(
    fields: list[tuple[str, bool]],
    before: Mapping[str, Any] | None,
    after: Mapping[str, Any] | None,
) -> dict[str, list[Any]]:
    """Return ``{field: [before, after]}`` for the fields whose values differ."""
    changes: dict[str, list[Any]] = {}
    for key, redacted in fields:
        old = jsonable(before.get(key)) if before is not None else None
        new = jsonable(after.get(key)) if after is not None else None
        if old == new and before is not None and after is not None:
            continue
        if old is None and new is None:
            continue
        if redacted:
            old = REDACTED if old is not None else None
            new = REDACTED if new is not None else None
        changes[key] = [old, new]
    return changes
