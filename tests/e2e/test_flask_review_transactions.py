"""Review of the Flask example: each state change is written, and audited, exactly once.

Runs on SQLite and on PostgreSQL (row-level security, the app as its own role).
"""

from __future__ import annotations

from sqlalchemy import func, select
from tests.e2e._flask_server import Served, onboard
from tests.e2e.test_flask_audit_atomic import count, new_key, platform, served

from tenantkit._audit_model import AuditRow

__all__ = ["served"]  # the fixture: SQLite, and PostgreSQL with the app role


def audit_count(served: Served, org_id: str, action: str) -> int:
    query = select(func.count()).where(AuditRow.tenant_id == org_id, AuditRow.action == action)
    return count(platform(served).jobs_engine, query)


def test_revoking_a_revoked_key_again_writes_no_new_entry(served: Served) -> None:
    """Three DELETEs of one key: each 204, one api_key.revoked entry; another org's id is 404."""
    org, other = onboard(served), onboard(served)
    made = new_key(served, org)
    owner = served.client(org.token)
    path = f"/organizations/{org.id}/api-keys/{made['key_id']}"
    for _ in range(3):
        response = owner.delete(path)
        assert response.status_code == 204, response.text
    assert audit_count(served, org.id, "api_key.revoked") == 1

    foreign = served.client(other.token).delete(
        f"/organizations/{other.id}/api-keys/{made['key_id']}"
    )
    assert foreign.status_code == 404, foreign.text
    assert audit_count(served, other.id, "api_key.revoked") == 0
    assert audit_count(served, org.id, "api_key.revoked") == 1
