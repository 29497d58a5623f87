"""Values no database can store are ValidationErrors (422), not driver errors (500 or 503)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from sqlalchemy.engine import Engine

from tenantkit.apikeys import APIKeyRow, APIKeyStore
from tenantkit.errors import ValidationError
from tenantkit.tenants import TenantRow, TenantStore
from test_review_support import BACKENDS, backend_engine

SECRET = "review-secret-for-the-api-key-store-0123456789"
TOO_BIG = [2**31, 10**20]
UNSTORABLE_TEXT = ["a\x00b", "lone \ud800 surrogate", "\udc80"]


@pytest.fixture(params=BACKENDS)
def engine(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Engine]:
    for engine in backend_engine(request, tmp_path, [APIKeyRow.__table__, TenantRow.__table__]):
        TenantStore(engine).create_all()
        APIKeyStore(engine, secret=SECRET).create_all()
        yield engine


@pytest.fixture
def stores(engine: Engine) -> tuple[TenantStore, APIKeyStore]:
    tenants = TenantStore(engine)
    tenants.create(id="acme")
    return tenants, APIKeyStore(engine, secret=SECRET)


@pytest.mark.parametrize("value", TOO_BIG)
@pytest.mark.parametrize("field", ["quota_requests_per_minute", "quota_tokens_per_minute"])
def test_tenant_quota_past_the_column_is_a_validation_error(
    stores: tuple[TenantStore, APIKeyStore], field: str, value: int
) -> None:
    """A quota beyond a 32-bit column is refused on create and update, naming the field."""
    tenants, _ = stores
    with pytest.raises(ValidationError) as created:
        tenants.create(id="big", **{field: value})
    with pytest.raises(ValidationError) as updated:
        tenants.update("acme", **{field: value})
    assert created.value.field == updated.value.field == field
    assert tenants.get("acme").version == 1


@pytest.mark.parametrize("value", TOO_BIG)
def test_expected_version_past_the_column_is_a_validation_error(
    stores: tuple[TenantStore, APIKeyStore], value: int
) -> None:
    """An expected_version no row can have is a ValidationError, not an overflow."""
    tenants, _ = stores
    with pytest.raises(ValidationError) as caught:
        tenants.update("acme", name="Acme", expected_version=value)
    assert caught.value.field == "expected_version"


@pytest.mark.parametrize("value", TOO_BIG)
@pytest.mark.parametrize("field", ["rate_limit", "token_limit"])
def test_api_key_limit_past_the_column_is_a_validation_error(
    stores: tuple[TenantStore, APIKeyStore], field: str, value: int
) -> None:
    """A per-key limit beyond a 32-bit column is refused before any write."""
    _, keys = stores
    with pytest.raises(ValidationError) as caught:
        keys.issue("acme", name="ci", **{field: value})
    assert caught.value.field == field
    assert keys.list("acme").items == []


@pytest.mark.parametrize("value", UNSTORABLE_TEXT)
def test_unstorable_tenant_text_is_a_validation_error(
    stores: tuple[TenantStore, APIKeyStore], value: str
) -> None:
    """A name or plan with NUL or a lone surrogate is refused, on create and on update."""
    tenants, _ = stores
    attempts: list[tuple[str, Callable[[], object]]] = [
        ("name", lambda: tenants.create(id="odd", name=value)),
        ("plan", lambda: tenants.create(id="odd", plan=value)),
        ("name", lambda: tenants.update("acme", name=value)),
    ]
    for field, attempt in attempts:
        with pytest.raises(ValidationError) as caught:
            attempt()
        assert caught.value.field == field
    assert tenants.list().items[0].name == "acme" and len(tenants.list().items) == 1


@pytest.mark.parametrize("value", UNSTORABLE_TEXT)
def test_unstorable_api_key_text_is_a_validation_error(
    stores: tuple[TenantStore, APIKeyStore], value: str
) -> None:
    """A key name or project id with NUL or a lone surrogate is refused, nothing stored."""
    _, keys = stores
    with pytest.raises(ValidationError) as named:
        keys.issue("acme", name=value)
    with pytest.raises(ValidationError) as project:
        keys.issue("acme", name="ci", project_id=value)
    assert (named.value.field, project.value.field) == ("name", "project_id")
    assert keys.list("acme").items == []


def test_the_largest_column_values_are_stored(stores: tuple[TenantStore, APIKeyStore]) -> None:
    """The bound is the column's: 2**31 - 1 is accepted and read back."""
    tenants, keys = stores
    config = tenants.update("acme", quota_requests_per_minute=2**31 - 1)
    issued = keys.issue("acme", name="ci", rate_limit=2**31 - 1)
    assert config.quota_requests_per_minute == issued.record.rate_limit == 2**31 - 1
