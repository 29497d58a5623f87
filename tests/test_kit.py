"""The TenantKit facade: admission stages, the non-blocking async path, health, failures."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Callable
from typing import Any

import pytest
from sqlalchemy import create_engine

from tenantkit import errors
from tenantkit.kit import TenantKit
from tenantkit.settings import JWTSettings, QuotaSettings, Settings
from tenantkit.tenants import TenantStore
from tenantkit.types import RequestInfo


def request(path: str = "/x", method: str = "GET", **headers: str) -> RequestInfo:
    return RequestInfo(method=method, path=path, headers={k.lower(): v for k, v in headers.items()})


def test_admit_binds_nothing_and_returns_context(
    make_kit: Callable[..., Any], jwt_for: Callable[..., str]
) -> None:
    """admit returns the identity, tenant and a context to bind; it binds nothing itself."""
    kit = make_kit()
    admission = kit.admit(request(authorization=f"Bearer {jwt_for(kit, 'acme', 'u7')}"))
    assert admission.tenant.id == "acme" and admission.identity.subject == "u7"
    assert admission.context.tenant is admission.tenant


def test_policy_checked_before_quota_is_charged(
    make_kit: Callable[..., Any], jwt_for: Callable[..., str]
) -> None:
    """A denied model is a 403 and spends none of the request quota."""
    kit = make_kit(tenants={"acme": {"allowed_models": ["small"], "quota_requests_per_minute": 1}})
    auth = f"Bearer {jwt_for(kit, 'acme')}"
    chat = request("/api/chat/completions", "POST", authorization=auth)
    for _ in range(3):
        with pytest.raises(errors.PolicyDenied):
            kit.admit(chat, b'{"model": "big", "messages": []}')
    kit.admit(chat, b'{"model": "small", "messages": []}')
    with pytest.raises(errors.QuotaExceeded) as exc:
        kit.admit(chat, b'{"model": "small", "messages": []}')
    assert int(exc.value.headers["Retry-After"]) >= 1


def test_async_path_moves_cache_misses_to_a_thread(
    make_kit: Callable[..., Any], jwt_for: Callable[..., str]
) -> None:
    """On a cold cache the async path loads the tenant off the event loop, then from cache."""
    kit = make_kit()
    kit.tenants.clear_cache()
    loop_thread: list[int] = []
    load_threads: list[int] = []
    original = kit.tenants.get

    def spying_get(tenant_id: str) -> Any:
        load_threads.append(threading.get_ident())
        return original(tenant_id)

    kit.tenants.get = spying_get
    auth = f"Bearer {jwt_for(kit, 'acme')}"

    async def main() -> None:
        loop_thread.append(threading.get_ident())
        await kit.admit_async(request(authorization=auth))
        await kit.admit_async(request(authorization=auth))

    asyncio.run(main())
    assert len(load_threads) == 1
    assert load_threads[0] != loop_thread[0]


def test_async_path_unknown_tenant_cached_as_unknown(
    make_kit: Callable[..., Any], jwt_for: Callable[..., str]
) -> None:
    """An unknown tenant is a 404 on the async path, from the store and then from the cache."""
    kit = make_kit()
    auth = f"Bearer {jwt_for(kit, 'nobody')}"

    async def main() -> None:
        for _ in range(2):
            with pytest.raises(errors.TenantNotFound):
                await kit.admit_async(request(authorization=auth))

    asyncio.run(main())


def test_tenant_store_down_is_503(tmp_path: Any, jwt_for: Callable[..., str]) -> None:
    """A failing tenant store gives 503 with Retry-After, never an unhandled error."""
    settings = Settings(resolvers=("jwt",), jwt=JWTSettings(secret="x" * 40))
    engine = create_engine(f"sqlite:///{tmp_path / 'missing' / 'nope.db'}")
    kit = TenantKit(settings, engine=engine, tenant_store=TenantStore(engine))
    with pytest.raises(errors.ServiceUnavailable) as exc:
        kit.admit(request(authorization=f"Bearer {jwt_for(kit, 'acme')}"))
    assert exc.value.headers["Retry-After"] == "1"
    assert kit.health()["database"] == "error"


def test_health_reports_each_check(make_kit: Callable[..., Any]) -> None:
    """health() names the failing check: here the quota storage on a closed port."""
    assert make_kit().health() == {"database": "ok", "quota_storage": "ok"}
    down = make_kit(quota=QuotaSettings(storage_uri="redis://127.0.0.1:1/0"))
    assert down.health() == {"database": "ok", "quota_storage": "error"}
    assert asyncio.run(down.health_async()) == {"database": "ok", "quota_storage": "error"}


def test_api_key_resolver_needs_a_secret(tmp_path: Any) -> None:
    """Enabling API keys without a server secret is a configuration error at start-up."""
    with pytest.raises(errors.ConfigurationError, match="api_key_secret"):
        TenantKit(
            Settings(
                database_url=f"sqlite:///{tmp_path / 'k.db'}", jwt=JWTSettings(secret="x" * 40)
            )
        )


def test_monthly_cap_is_enforced_and_calls_counted(make_kit: Callable[..., Any]) -> None:
    """A hard monthly API-call cap gives 429 with Retry-After; admitted calls are counted."""
    from sqlalchemy.orm import sessionmaker

    from tenantkit._db import Base
    from tenantkit.plans import Plans
    from tenantkit.usage import ApiCallCounter, UsageRecorder

    plans = Plans.from_mapping(
        {
            "TENANTKIT_PLANS": '{"tiny": {"price": "0", "api_call_cap": "hard", "limits": '
            '{"users": 1, "projects": 1, "api_calls": 3, "storage_gb": 1}}}'
        }
    )
    kit = make_kit(tenants={"acme": {"plan": "tiny"}, "globex": {"plan": "tiny"}})
    Base.metadata.create_all(kit.engine)
    recorder = UsageRecorder(sessionmaker(kit.engine), plans=plans)
    counter = ApiCallCounter(recorder, background=False, max_pending=100)
    capped = TenantKit(kit.settings, engine=kit.engine, call_counter=counter)
    key = kit.api_keys.issue("acme", name="k").key
    for _ in range(3):
        capped.admit(request(**{"x-api-key": key}))
    with pytest.raises(errors.QuotaExceeded) as exc:
        capped.admit(request(**{"x-api-key": key}))
    assert int(exc.value.headers["Retry-After"]) >= 1
    assert counter.cycle_count("acme") == 3
    other = kit.api_keys.issue("globex", name="k").key
    capped.admit(request(**{"x-api-key": other}))
    counter.close()
    assert counter.cycle_count("globex") == 1


def test_rejections_after_identity_carry_it(
    make_kit: Callable[..., Any], jwt_for: Callable[..., str]
) -> None:
    """Policy and quota rejections carry the identity for on_reject hooks and audit."""
    kit = make_kit(tenants={"acme": {"allowed_models": []}})
    chat = request(
        "/api/chat/completions", "POST", authorization=f"Bearer {jwt_for(kit, 'acme', 'u9')}"
    )
    with pytest.raises(errors.PolicyDenied) as exc:
        kit.admit(chat, b'{"model": "any", "messages": []}')
    assert exc.value.identity is not None and exc.value.identity.subject == "u9"
    assert "identity" not in exc.value.to_problem()


def test_denials_are_audited_once_per_interval(
    make_kit: Callable[..., Any], jwt_for: Callable[..., str]
) -> None:
    """Quota and policy rejections reach the audit trail through the denial hook."""
    from tenantkit.audit import DenialRecorder, create_tables, query

    kit = make_kit(tenants={"acme": {"allowed_models": ["m"], "quota_requests_per_minute": 1}})
    create_tables(kit.engine)
    audited = TenantKit(kit.settings, engine=kit.engine, denials=DenialRecorder(kit.engine))
    auth = f"Bearer {jwt_for(kit, 'acme', 'u1')}"
    chat = request("/api/chat/completions", "POST", authorization=auth)
    for body in (b'{"model": "x"}', b'{"model": "x"}', b'{"model": "m"}', b'{"model": "m"}'):
        with contextlib.suppress(errors.PolicyDenied, errors.QuotaExceeded):
            audited.admit(chat, body)
    page = query(kit.engine, "acme")
    assert sorted(e.action for e in page.items) == ["policy.denied", "quota.exceeded"]
    assert {e.actor for e in page.items} == {"user:u1"}
