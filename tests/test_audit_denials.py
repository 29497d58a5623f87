"""Recording rejected requests: once per tenant, actor and reason per interval, never raising."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from sqlalchemy.engine import Engine

from tenantkit import audit
from tenantkit._db import make_engine
from tenantkit.errors import PolicyDenied, QuotaExceeded
from tenantkit.types import Identity, RequestInfo
from test_audit_support import engine_fixture, rows  # noqa: F401  (fixtures)

CALLER = Identity(tenant_id="acme", source="api_key", authenticated=True, api_key_id="k1")
REQUEST = RequestInfo(
    method="POST",
    path="/api/chat/completions",
    headers={"user-agent": "sdk/2"},
    client="10.0.0.9",
    request_id="req-7",
)


class Timer:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def _quota() -> QuotaExceeded:
    return QuotaExceeded("request quota spent", reason="quota_exceeded", retry_after=12)


def test_first_denial_is_recorded_with_its_details(engine: Engine) -> None:
    """A denial becomes an entry naming the caller, the request and the reason."""
    recorder = audit.DenialRecorder(engine)
    entry = recorder(CALLER, REQUEST, _quota())
    assert entry is not None
    stored = rows(engine, "acme")[0]
    assert (stored["action"], stored["actor"], stored["request_id"], stored["client_ip"]) == (
        "quota.exceeded",
        "api_key:k1",
        "req-7",
        "10.0.0.9",
    )
    assert stored["user_agent"] == "sdk/2"
    assert stored["metadata"] == {
        "status": 429,
        "detail": "request quota spent",
        "method": "POST",
        "path": "/api/chat/completions",
        "reason": "quota_exceeded",
        "retry_after": 12,
    }


def test_repeats_are_counted_not_written(engine: Engine) -> None:
    """Repeats within the interval write nothing; the next entry carries their count."""
    timer = Timer()
    recorder = audit.DenialRecorder(engine, interval=60, timer=timer)
    assert recorder(CALLER, REQUEST, _quota()) is not None
    assert recorder(CALLER, REQUEST, _quota()) is None
    assert recorder(CALLER, REQUEST, _quota()) is None
    timer.now = 61
    later = recorder(CALLER, REQUEST, _quota())
    assert later is not None and later.metadata == {**dict(later.metadata or {}), "suppressed": 2}
    assert len(rows(engine)) == 2
    assert audit.verify(engine, "acme").ok


def test_different_reasons_and_callers_are_separate(engine: Engine) -> None:
    """A policy denial, or another caller, is not hidden by an earlier quota denial."""
    recorder = audit.DenialRecorder(engine)
    other = Identity(tenant_id="acme", source="jwt", subject="ann")
    recorder(CALLER, REQUEST, _quota())
    recorder(CALLER, REQUEST, PolicyDenied("model not allowed", reason="model_not_allowed"))
    recorder(other, REQUEST, _quota())
    assert [(r["action"], r["actor"]) for r in rows(engine)] == [
        ("quota.exceeded", "api_key:k1"),
        ("policy.denied", "api_key:k1"),
        ("quota.exceeded", "user:ann"),
    ]


def test_a_failed_write_is_logged_and_retried_next_time(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """When the log cannot be written the call returns None, logs, and does not suppress."""
    engine = make_engine(f"sqlite:///{tmp_path}/empty.db")  # no audit tables yet
    recorder = audit.DenialRecorder(engine)
    with caplog.at_level(logging.ERROR, "tenantkit.audit"):
        assert recorder(CALLER, REQUEST, _quota()) is None
    assert "could not record quota.exceeded" in caplog.text
    audit.create_tables(engine)
    entry = recorder(CALLER, REQUEST, _quota())
    assert entry is not None and (entry.metadata or {}).get("suppressed") is None
    engine.dispose()
