"""Plans and their limits: Free, Starter, Pro, Enterprise, overridable from settings.

``enforce`` turns a limit into a 402 problem naming the cheapest plan that fits;
``monthly_cap_check`` turns a spent monthly API-call allowance into a 429 that
lasts until the next billing cycle (for plans whose cap is ``hard``).
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal, InvalidOperation
from typing import Any, Literal, get_args

from ._usage_cycle import next_cycle_start, seconds_until_next_cycle
from .errors import ConfigurationError, PaymentRequired, QuotaExceeded, UnprocessableEntity
from .types import TenantConfig

Resource = Literal["users", "projects", "api_calls", "storage_gb"]
CapMode = Literal["hard", "soft"]
RESOURCES: tuple[Resource, ...] = get_args(Resource)
PLANS_KEY = "TENANTKIT_PLANS"


@dataclass(frozen=True, kw_only=True, slots=True)
class Plan:
    """A plan: monthly price, limits per resource (``None`` = unlimited) and overage pricing.

    ``api_call_cap`` is ``"hard"`` (calls past the monthly allowance get 429
    until the cycle resets) or ``"soft"`` (calls go through, alerts fire and
    the excess is billed at ``overage_price`` per ``overage_unit`` calls).
    ``price`` ``None`` means a negotiated price (Enterprise).
    """

    name: str
    title: str
    price: Decimal | None
    limits: Mapping[str, int | None]
    api_call_cap: CapMode = "hard"
    overage_unit: int = 1000
    overage_price: Decimal | None = None
    currency: str = "usd"
    stripe_price_id: str | None = None

    def __post_init__(self) -> None:
        missing = [r for r in RESOURCES if r not in self.limits]
        if missing:
            raise ConfigurationError(f"plan {self.name!r} has no limit for {missing}")
        if self.api_call_cap not in ("hard", "soft"):
            raise ConfigurationError(f"plan {self.name!r}: api_call_cap must be hard or soft")
        if self.overage_unit <= 0:
            raise ConfigurationError(f"plan {self.name!r}: overage_unit must be positive")

    def limit(self, resource: Resource) -> int | None:
        """Return the limit on ``resource`` (``None`` = unlimited)."""
        return self.limits[_check_resource(resource)]

    def fits(self, resource: Resource, count: int) -> bool:
        """Return whether ``count`` of ``resource`` is within this plan."""
        limit = self.limit(resource)
        return limit is None or count <= limit

    def replace(self, **changes: Any) -> Plan:
        """Return a copy with ``changes`` applied."""
        return dataclasses.replace(self, **changes)


def _limits(users: int | None, projects: int | None, calls: int | None, gb: int | None) -> Any:
    return {"users": users, "projects": projects, "api_calls": calls, "storage_gb": gb}


FREE = Plan(name="free", title="Free", price=Decimal("0"), limits=_limits(3, 1, 10_000, 1))
STARTER = Plan(
    name="starter",
    title="Starter",
    price=Decimal("29"),
    limits=_limits(10, 5, 100_000, 10),
    api_call_cap="soft",
    overage_price=Decimal("0.50"),
)
PRO = Plan(
    name="pro",
    title="Pro",
    price=Decimal("99"),
    limits=_limits(50, 20, 1_000_000, 100),
    api_call_cap="soft",
    overage_price=Decimal("0.30"),
)
ENTERPRISE = Plan(
    name="enterprise",
    title="Enterprise",
    price=None,
    limits=_limits(None, None, None, None),
    api_call_cap="soft",
)


@dataclass(frozen=True, slots=True)
class Plans:
    """A registry of plans by name; build it from settings with ``from_mapping``."""

    plans: Mapping[str, Plan] = field(default_factory=dict)

    @classmethod
    def default(cls) -> Plans:
        """Return the built-in Free, Starter, Pro and Enterprise plans."""
        return cls({p.name: p for p in (FREE, STARTER, PRO, ENTERPRISE)})

    @classmethod
    def from_mapping(cls, config: Mapping[str, Any], *, base: Plans | None = None) -> Plans:
        """Return ``base`` (default plans) overridden by ``config[TENANTKIT_PLANS]``.

        The value is a mapping (or its JSON text) of plan name to fields:
        ``{"starter": {"price": "39", "limits": {"users": 15},
        "stripe_price_id": "price_123"}, "team": {...a whole new plan...}}``.
        A limit of ``null`` or ``"unlimited"`` means no limit.
        """
        registry = base or cls.default()
        raw = config.get(PLANS_KEY)
        if raw is None or raw == "":
            return registry
        if isinstance(raw, str):
            try:
                raw = json.loads(raw)
            except json.JSONDecodeError as exc:
                raise ConfigurationError(f"{PLANS_KEY} is not valid JSON: {exc}") from exc
        if not isinstance(raw, Mapping):
            raise ConfigurationError(f"{PLANS_KEY} must map plan names to plan fields")
        plans = dict(registry.plans)
        for name, fields in raw.items():
            plans[name] = _plan_from_fields(str(name), fields, plans.get(name))
        return cls(plans)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Plans:
        """Return the plans with overrides from the ``TENANTKIT_PLANS`` variable."""
        return cls.from_mapping(os.environ if environ is None else environ)

    def __iter__(self) -> Iterator[Plan]:
        """Iterate plans from the cheapest; negotiated prices come last."""
        return iter(sorted(self.plans.values(), key=_price_rank))

    def __contains__(self, name: object) -> bool:
        return name in self.plans

    def get(self, name: str) -> Plan:
        """Return the plan called ``name``; an unknown name is a configuration error."""
        try:
            return self.plans[name]
        except KeyError:
            raise ConfigurationError(
                f"unknown plan {name!r}; known plans: {sorted(self.plans)}"
            ) from None

    def resolve(self, tenant: str | Plan | TenantConfig) -> Plan:
        """Return the plan of a tenant config, a plan name or a plan."""
        if isinstance(tenant, Plan):
            return tenant
        if isinstance(tenant, TenantConfig):
            return self.get(tenant.plan)
        return self.get(tenant)

    def by_stripe_price(self, price_id: str) -> Plan | None:
        """Return the plan sold under the Stripe price ``price_id``, if any."""
        for plan in self.plans.values():
            if plan.stripe_price_id == price_id:
                return plan
        return None

    def cheapest_fit(self, resource: Resource, count: int) -> Plan | None:
        """Return the cheapest plan whose limit on ``resource`` admits ``count``."""
        return next((p for p in self if p.fits(resource, count)), None)

    def enforce(
        self, tenant: str | Plan | TenantConfig, resource: Resource, new_count: int
    ) -> None:
        """Raise ``PaymentRequired`` (402) if ``new_count`` exceeds the plan's limit."""
        plan = self.resolve(tenant)
        count = _check_count(new_count)
        limit = plan.limit(resource)
        if limit is None or count <= limit:
            return
        upgrade = self.cheapest_fit(resource, count)
        hint = f"; upgrade to {upgrade.title}" if upgrade is not None else ""
        raise PaymentRequired(
            f"the {plan.title} plan allows {limit} {resource.replace('_', ' ')}{hint}",
            plan=plan.name,
            resource=resource,
            limit=limit,
            current=count,
            upgrade_to=upgrade.name if upgrade is not None else None,
        )

    def monthly_cap_check(
        self, tenant: str | Plan | TenantConfig, count: int, now: datetime
    ) -> None:
        """Raise ``QuotaExceeded`` (429) if ``count`` calls this cycle pass a hard cap.

        ``count`` includes the call being admitted. ``Retry-After`` is the whole
        number of seconds until the next cycle starts. Soft caps never raise.
        """
        plan = self.resolve(tenant)
        used = _check_count(count)
        limit = plan.limit("api_calls")
        if limit is None or plan.api_call_cap == "soft" or used <= limit:
            return
        retry_after = seconds_until_next_cycle(now)
        upgrade = self.cheapest_fit("api_calls", used)
        raise QuotaExceeded(
            f"the {plan.title} plan's {limit} API calls for this month are spent",
            headers={"Retry-After": str(retry_after)},
            reason="monthly_api_calls",
            limit=limit,
            current=used,
            retry_after=retry_after,
            resets_at=next_cycle_start(now).isoformat().replace("+00:00", "Z"),
            upgrade_to=upgrade.name if upgrade is not None else None,
        )


DEFAULT_PLANS = Plans.default()
PlanLike = str | Plan | TenantConfig


def enforce(
    tenant: str | Plan | TenantConfig,
    resource: Resource,
    new_count: int,
    *,
    plans: Plans = DEFAULT_PLANS,
) -> None:
    """Raise ``PaymentRequired`` (402) if ``new_count`` of ``resource`` exceeds the plan."""
    plans.enforce(tenant, resource, new_count)


def monthly_cap_check(
    tenant: str | Plan | TenantConfig,
    count: int,
    now: datetime,
    *,
    plans: Plans = DEFAULT_PLANS,
) -> None:
    """Raise ``QuotaExceeded`` (429 + Retry-After) when a hard monthly API-call cap is passed."""
    plans.monthly_cap_check(tenant, count, now)


def _price_rank(plan: Plan) -> tuple[int, Decimal, str]:
    return (1, Decimal(0), plan.name) if plan.price is None else (0, plan.price, plan.name)


def _check_resource(resource: str) -> Resource:
    if resource not in RESOURCES:
        raise UnprocessableEntity(
            f"unknown resource {resource!r}; one of {list(RESOURCES)}", field="resource"
        )
    return resource


def _check_count(count: object) -> int:
    if isinstance(count, bool) or not isinstance(count, int) or count < 0:
        raise UnprocessableEntity("a count must be a non-negative integer", field="count")
    return count


def _plan_from_fields(name: str, fields: object, current: Plan | None) -> Plan:
    if not isinstance(fields, Mapping):
        raise ConfigurationError(f"{PLANS_KEY}[{name!r}] must be a mapping of plan fields")
    known = {f.name for f in dataclasses.fields(Plan)}
    unknown = set(fields) - known
    if unknown:
        raise ConfigurationError(f"{PLANS_KEY}[{name!r}]: unknown fields {sorted(unknown)}")
    if current is None and "limits" not in fields:
        raise ConfigurationError(f"{PLANS_KEY}[{name!r}] is a new plan and needs limits")
    limits: dict[str, int | None] = dict(current.limits) if current else {}
    for resource, value in dict(fields.get("limits") or {}).items():
        _check_resource(resource)
        limits[resource] = _limit_value(name, resource, value)
    kwargs: dict[str, Any] = {"name": name, "title": fields.get("title", name.title())}
    if current is not None:
        kwargs = {f: getattr(current, f) for f in known}
    kwargs["limits"] = limits
    for key in ("title", "api_call_cap", "currency", "stripe_price_id"):
        if key in fields:
            kwargs[key] = fields[key]
    for key in ("price", "overage_price"):
        if key in fields:
            kwargs[key] = _money(name, key, fields[key])
    if "overage_unit" in fields:
        kwargs["overage_unit"] = _int(name, "overage_unit", fields["overage_unit"])
    kwargs.setdefault("price", None)
    return Plan(**kwargs)


def _limit_value(plan: str, resource: str, value: object) -> int | None:
    if value is None or value == "unlimited":
        return None
    return _int(plan, f"limits.{resource}", value)


def _int(plan: str, key: str, value: object) -> int:
    try:
        number = int(str(value))
    except ValueError:
        raise ConfigurationError(f"plan {plan!r}: {key} must be an integer") from None
    if number < 0:
        raise ConfigurationError(f"plan {plan!r}: {key} must not be negative")
    return number


def _money(plan: str, key: str, value: object) -> Decimal | None:
    if value is None:
        return None
    try:
        amount = Decimal(str(value))
    except InvalidOperation:
        raise ConfigurationError(f"plan {plan!r}: {key} must be a decimal amount") from None
    if not amount.is_finite() or amount < 0:
        raise ConfigurationError(f"plan {plan!r}: {key} must be a non-negative amount")
    return amount


def iter_plans(plans: Iterable[Plan]) -> list[dict[str, Any]]:
    """Return plans as JSON-ready dictionaries (prices as strings), cheapest first."""
    return [
        {
            "name": p.name,
            "title": p.title,
            "price": None if p.price is None else str(p.price),
            "currency": p.currency,
            "limits": dict(p.limits),
            "api_call_cap": p.api_call_cap,
            "overage_unit": p.overage_unit,
            "overage_price": None if p.overage_price is None else str(p.overage_price),
        }
        for p in plans
    ]
