"""Hostile values reaching the audit trail: a 4xx or a stored, verifiable entry, never a 500."""

from __future__ import annotations

import base64
from typing import Any

import pytest
from sqlalchemy.engine import Engine

from tenantkit import audit
from tenantkit.context import bound_tenant
from tenantkit.errors import PolicyDenied, UnprocessableEntity, ValidationError
from tenantkit.types import Identity, RequestInfo
from test_audit_support import engine_fixture, rows  # noqa: F401  (fixtures)

CALLER = Identity(tenant_id="acme", source="jwt", authenticated=True, subject="u1")
REQUEST = RequestInfo(method="POST", path="/api/chat/completions", headers={}, request_id="r-1")


def _cursor(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


@pytest.mark.parametrize(
    "cursor",
    [
        5,
        ["acme:1"],
        "A" * 100_000,
        _cursor(b"acme:" + b"9" * 30),  # past the BIGINT seq column
        _cursor(b"acme:-3"),
        _cursor(b"globex:2"),  # another tenant's log
    ],
)
def test_garbage_cursor_is_422(engine: Engine, cursor: Any) -> None:
    """A cursor of the wrong type, size, range or tenant is a 422 problem, not a 500."""
    log = audit.AuditLog(engine)
    log.record("login", tenant_id="acme")
    with pytest.raises(UnprocessableEntity) as caught:
        log.query("acme", cursor=cursor)
    assert caught.value.status == 422


@pytest.mark.parametrize(
    ("name", "value"),
    [("action", 5), ("actor", ["x"]), ("resource_type", {"a": 1}), ("action", "a\ud800")],
)
def test_filter_of_the_wrong_type_is_422(engine: Engine, name: str, value: Any) -> None:
    """A non-string or unstorable filter value is a 422 naming the filter."""
    log = audit.AuditLog(engine)
    with pytest.raises(UnprocessableEntity) as caught:
        log.query("acme", **{name: value})
    assert caught.value.extra["field"] == name


@pytest.mark.parametrize("value", ["a\ud800", "nul\x00byte"])
@pytest.mark.parametrize("field", ["action", "resource_type", "resource_id", "actor"])
def test_unstorable_text_field_is_a_validation_error(
    engine: Engine, field: str, value: str
) -> None:
    """record() refuses a text field with a lone surrogate or NUL, writing nothing."""
    log = audit.AuditLog(engine)
    kwargs: dict[str, Any] = {"action": "login", field: value}
    with pytest.raises(ValidationError) as caught:
        log.record(tenant_id="acme", **kwargs)
    assert caught.value.field == field
    assert rows(engine, "acme") == []


def test_surrogates_in_metadata_and_context_are_stored_and_verify(engine: Engine) -> None:
    """A lone surrogate in metadata or changes verifies; one from the caller becomes U+FFFD."""
    log = audit.AuditLog(engine)
    odd = Identity(tenant_id="acme", source="jwt", authenticated=True, subject="\udc80\x00")
    with bound_tenant(odd, request_id="r-2"):
        entry = log.record(
            "note", metadata={"text": "x\ud800y"}, changes={"name": ["\udfff", "ok"]}
        )
    assert entry.metadata == {"text": "x\ud800y"}
    stored = rows(engine, "acme")[0]
    assert stored["actor"] == "user:\ufffd\ufffd"
    assert stored["metadata"] == {"text": "x\ud800y"}
    assert log.verify("acme").ok


def test_denial_with_a_surrogate_model_is_recorded(engine: Engine) -> None:
    """A policy denial naming a model '\\ud800' (from a JSON body) is recorded, never raised."""
    recorder = audit.DenialRecorder(engine)
    denied = PolicyDenied("model '\\ud800' is not allowed", reason="model_not_allowed")
    denied.extra["model"] = "\ud800"
    entry = recorder(CALLER, REQUEST, denied)
    assert entry is not None and entry.metadata is not None
    assert entry.metadata["model"] == "\ud800"
    assert audit.AuditLog(engine).verify("acme").ok


@pytest.mark.parametrize("days", [10**6, 10**10])
def test_retention_past_the_calendar_is_a_configuration_error(engine: Engine, days: int) -> None:
    """A retention of a million days is refused as configuration, not an OverflowError."""
    from tenantkit.errors import ConfigurationError

    log = audit.AuditLog(engine)
    log.record("login", tenant_id="acme")
    with pytest.raises(ConfigurationError, match="default_days"):
        log.purge(default_days=days)
    with pytest.raises(ConfigurationError, match="per_tenant"):
        log.purge(per_tenant={"acme": days})
    assert len(rows(engine, "acme")) == 1
