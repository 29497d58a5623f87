"""Plans: the built-in table, overrides from settings, 402 with the upgrade, monthly caps."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from decimal import Decimal

import pytest

from tenantkit.errors import (
    ConfigurationError,
    PaymentRequired,
    QuotaExceeded,
    UnprocessableEntity,
)
from tenantkit.plans import DEFAULT_PLANS, Plans, enforce, iter_plans, monthly_cap_check
from tenantkit.types import TenantConfig


def test_built_in_plans_match_the_published_table() -> None:
    """Free, Starter, Pro and Enterprise carry the documented limits and prices."""
    table = {
        p.name: (
            p.limit("users"),
            p.limit("projects"),
            p.limit("api_calls"),
            p.limit("storage_gb"),
            p.price,
        )
        for p in DEFAULT_PLANS
    }
    assert table == {
        "free": (3, 1, 10_000, 1, Decimal("0")),
        "starter": (10, 5, 100_000, 10, Decimal("29")),
        "pro": (50, 20, 1_000_000, 100, Decimal("99")),
        "enterprise": (None, None, None, None, None),
    }
    assert [p.name for p in DEFAULT_PLANS] == ["free", "starter", "pro", "enterprise"]


def test_limit_exceeded_is_402_naming_the_cheapest_plan_that_fits() -> None:
    """A fourth user on Free needs Starter; the problem carries limit, current and upgrade."""
    tenant = TenantConfig(id="acme", name="Acme", plan="free")
    enforce(tenant, "users", 3)
    with pytest.raises(PaymentRequired) as info:
        enforce(tenant, "users", 4)
    problem = info.value.to_problem()
    assert info.value.status == 402
    assert problem["limit"] == 3 and problem["current"] == 4
    assert problem["upgrade_to"] == "starter" and problem["resource"] == "users"


def test_upgrade_skips_plans_that_would_still_not_fit() -> None:
    """Twelve projects on Free skip Starter (5) and point at Pro (20)."""
    with pytest.raises(PaymentRequired) as info:
        enforce("free", "projects", 12)
    assert info.value.to_problem()["upgrade_to"] == "pro"


def test_beyond_every_priced_plan_points_at_enterprise() -> None:
    """Past Pro's storage the only plan that fits is Enterprise; it never raises itself."""
    with pytest.raises(PaymentRequired) as info:
        enforce("pro", "storage_gb", 101)
    assert info.value.to_problem()["upgrade_to"] == "enterprise"
    enforce("enterprise", "storage_gb", 10**9)


def test_no_plan_fits_gives_no_upgrade() -> None:
    """With no unlimited plan registered, upgrade_to is null rather than a wrong hint."""
    plans = Plans({p.name: p for p in DEFAULT_PLANS if p.name != "enterprise"})
    with pytest.raises(PaymentRequired) as info:
        plans.enforce("pro", "users", 51)
    assert info.value.to_problem()["upgrade_to"] is None


def test_bad_resource_count_or_plan_are_clear_errors() -> None:
    """Unknown resources and negative counts are 422s; an unknown plan is a config error."""
    with pytest.raises(UnprocessableEntity):
        enforce("free", "seats", 1)  # type: ignore[arg-type]
    with pytest.raises(UnprocessableEntity):
        enforce("free", "users", -1)
    with pytest.raises(ConfigurationError):
        enforce("gold", "users", 1)


def test_settings_override_and_add_plans() -> None:
    """TENANTKIT_PLANS (JSON) overrides limits and prices and can add a new plan."""
    config = {
        "TENANTKIT_PLANS": json.dumps(
            {
                "starter": {"price": "39", "limits": {"users": 15}, "stripe_price_id": "price_s"},
                "team": {
                    "price": "59",
                    "limits": {
                        "users": 25,
                        "projects": 10,
                        "api_calls": 500_000,
                        "storage_gb": "unlimited",
                    },
                },
            }
        )
    }
    plans = Plans.from_mapping(config)
    starter = plans.get("starter")
    assert starter.price == Decimal("39") and starter.limit("users") == 15
    assert starter.limit("projects") == 5  # untouched limits keep their defaults
    assert plans.get("team").limit("storage_gb") is None
    assert plans.by_stripe_price("price_s") is starter
    with pytest.raises(PaymentRequired) as info:
        plans.enforce("starter", "users", 20)
    assert info.value.to_problem()["upgrade_to"] == "team"
    assert [p["name"] for p in iter_plans(plans)][:3] == ["free", "starter", "team"]


@pytest.mark.parametrize(
    "raw",
    [
        "{not json",
        json.dumps(["free"]),
        json.dumps({"new": {"price": "1"}}),
        json.dumps({"free": {"limits": {"users": -1}}}),
        json.dumps({"free": {"price": "abc"}}),
        json.dumps({"free": {"colour": "red"}}),
        json.dumps({"free": {"api_call_cap": "maybe"}}),
    ],
)
def test_bad_plan_settings_fail_at_start_up(raw: str) -> None:
    """Malformed plan overrides raise ConfigurationError with the key named."""
    with pytest.raises(ConfigurationError):
        Plans.from_env({"TENANTKIT_PLANS": raw})


def test_hard_monthly_cap_is_429_until_the_next_cycle() -> None:
    """Free's 10,001st call this month is refused with Retry-After to the 1st, 00:00 UTC."""
    now = datetime(2026, 1, 31, 23, 59, 30, tzinfo=UTC)
    monthly_cap_check("free", 10_000, now)
    with pytest.raises(QuotaExceeded) as info:
        monthly_cap_check("free", 10_001, now)
    assert info.value.status == 429
    assert info.value.headers["Retry-After"] == "30"
    problem = info.value.to_problem()
    assert problem["retry_after"] == 30 and problem["resets_at"] == "2026-02-01T00:00:00Z"
    assert problem["upgrade_to"] == "starter"


def test_retry_after_rounds_partial_seconds_up() -> None:
    """Half a second before the reset still asks the client to wait one whole second."""
    now = datetime(2026, 12, 31, 23, 59, 59, 500_000, tzinfo=UTC)
    with pytest.raises(QuotaExceeded) as info:
        monthly_cap_check("free", 20_000, now)
    assert info.value.headers["Retry-After"] == "1"


def test_soft_cap_never_refuses() -> None:
    """Starter's cap is soft: calls past the allowance go through (and are billed)."""
    monthly_cap_check("starter", 5_000_000, datetime(2026, 1, 1, tzinfo=UTC))


def test_cap_mode_is_overridable_per_plan() -> None:
    """A plan made hard in settings refuses past its allowance."""
    plans = Plans.from_mapping({"TENANTKIT_PLANS": {"starter": {"api_call_cap": "hard"}}})
    with pytest.raises(QuotaExceeded):
        plans.monthly_cap_check("starter", 100_001, datetime(2026, 1, 1, tzinfo=UTC))
