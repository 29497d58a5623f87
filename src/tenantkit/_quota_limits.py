"""Limits: what a request is charged against, and which limits apply to it."""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from typing import Literal

from ._ratelimit_headers import policy_item
from .errors import ValidationError
from .types import Identity, TenantConfig

Unit = Literal["requests", "tokens"]
LimitName = Literal["tenant-requests", "key-requests", "tenant-tokens", "key-tokens"]


@dataclass(frozen=True)
class Limit:
    """One per-minute quota: a name, the bucket key it charges, its unit and size."""

    name: str
    key: str
    unit: Unit
    per_minute: int

    def __post_init__(self) -> None:
        if self.unit not in ("requests", "tokens"):
            raise ValidationError(f"unknown quota unit {self.unit!r}", field="unit")
        if isinstance(self.per_minute, bool) or not isinstance(self.per_minute, int):
            raise ValidationError("per_minute must be an integer", field="per_minute")
        if self.per_minute < 0:
            raise ValidationError("per_minute must not be negative", field="per_minute")

    @cached_property
    def policy_item(self) -> str:
        """This limit as a ``RateLimit-Policy`` list member (computed once)."""
        return policy_item(self.name, self.per_minute, self.unit)


class LimitSet(tuple[Limit, ...]):
    """The limits of one (tenant, key) signature, built once and shared by its requests.

    A tuple, so every backend takes it as the ``Sequence[Limit]`` it is; it
    also carries what the hot path would otherwise recompute per request.
    """

    def __new__(cls, limits: tuple[Limit, ...]) -> LimitSet:
        made = super().__new__(cls, limits)
        made.policy_header = ", ".join([limit.policy_item for limit in limits])
        made.item_prefixes = tuple(f'"{limit.name}";r=' for limit in limits)
        made.floor_costs = tuple([1 if limit.unit == "requests" else 0 for limit in limits])
        return made

    policy_header: str
    """The ``RateLimit-Policy`` value of these limits."""
    item_prefixes: tuple[str, ...]
    """Each limit's ``RateLimit`` list member up to its remaining count."""
    floor_costs: tuple[int, ...]
    """The least a request costs each limit: 1 a request limit, 0 a token limit."""


_LIMITS_CACHE: dict[tuple[object, ...], LimitSet] = {}
_LIMITS_CACHE_MAX = 65_536


def limits_for(tenant: TenantConfig, identity: Identity) -> list[Limit]:
    """Return the limits that apply to a request of ``identity`` on ``tenant``.

    Tenant request and token quotas, then the API key's own; ``None`` means no limit.
    Keys carry the tenant as a Redis hash tag so one tenant's buckets share a slot.
    """
    return list(limit_set_for(tenant, identity))


def limit_set_for(tenant: TenantConfig, identity: Identity) -> LimitSet:
    """``limits_for`` as the shared, immutable ``LimitSet`` (the pipeline's hot path)."""
    key_id = identity.api_key_id
    signature = (
        tenant.id,
        tenant.quota_requests_per_minute,
        tenant.quota_tokens_per_minute,
        key_id,
        identity.api_key_rate_limit if key_id is not None else None,
        identity.api_key_token_limit if key_id is not None else None,
    )
    cached = _LIMITS_CACHE.get(signature)
    if cached is None:
        cached = LimitSet(_build_limits(*signature))
        if len(_LIMITS_CACHE) >= _LIMITS_CACHE_MAX:
            _LIMITS_CACHE.clear()
        _LIMITS_CACHE[signature] = cached
    return cached


def _build_limits(
    tenant_id: str,
    requests: int | None,
    tokens: int | None,
    key_id: str | None,
    key_requests: int | None,
    key_tokens: int | None,
) -> tuple[Limit, ...]:
    tag = f"{{{tenant_id}}}"
    found: list[Limit] = []
    if requests is not None:
        found.append(Limit("tenant-requests", f"{tag}:requests", "requests", requests))
    if key_requests is not None:
        found.append(
            Limit("key-requests", f"{tag}:key:{key_id}:requests", "requests", key_requests)
        )
    if tokens is not None:
        found.append(Limit("tenant-tokens", f"{tag}:tokens", "tokens", tokens))
    if key_tokens is not None:
        found.append(Limit("key-tokens", f"{tag}:key:{key_id}:tokens", "tokens", key_tokens))
    return tuple(found)
