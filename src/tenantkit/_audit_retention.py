"""Retention (``purge``) and, on PostgreSQL, the guard that keeps the log append-only.

``purge`` deletes, per tenant, the oldest run of entries older than the
retention period, in batches; each batch commits together with the tenant's
checkpoint (seq and hash of the last entry it deleted), so ``verify`` of what
remains starts from a known link even if the job stops half-way.

``protect`` grants the application role SELECT and INSERT on the log and
nothing more, and installs triggers refusing UPDATE always and DELETE unless
the transaction ran ``SET LOCAL tenantkit.audit_purge = on`` (``purge`` does);
the app role has no DELETE privilege, so only the owner's retention job can
remove entries.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import delete, func, select, text, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import DBAPIError

from . import _db
from ._audit_model import CHECKPOINTS, LOG
from .errors import ConfigurationError, StorageError
from .types import validate_tenant_id

PURGE_SETTING = "tenantkit.audit_purge"
DEFAULT_RETENTION_DAYS = 90

Progress = Callable[[int, int], Any]


@dataclass(frozen=True, slots=True)
class PurgeResult:
    """What ``purge`` removed: the total, per tenant, and each tenant's new checkpoint seq."""

    deleted: int
    per_tenant: Mapping[str, int] = field(default_factory=dict)
    checkpoints: Mapping[str, int] = field(default_factory=dict)


def purge(
    engine: Engine,
    *,
    now: datetime | None = None,
    default_days: int = DEFAULT_RETENTION_DAYS,
    per_tenant: Mapping[str, int] | None = None,
    progress: Progress | None = None,
    batch_size: int = 1000,
) -> PurgeResult:
    """Delete entries older than each tenant's retention period, leaving checkpoints.

    ``per_tenant`` overrides ``default_days`` by tenant id. ``progress(done,
    total)`` is called before the first batch and after each one. Run it with
    the owner's engine: the protected application role cannot delete.
    """
    now = _db.utcnow() if now is None else now
    if now.tzinfo is None:
        raise ConfigurationError("now must be timezone-aware")
    _check_days(default_days, "default_days")
    overrides = dict(per_tenant or {})
    for tenant_id, days in overrides.items():
        validate_tenant_id(tenant_id, field_name="per_tenant")
        _check_days(days, f"per_tenant[{tenant_id!r}]")
    if batch_size < 1:
        raise ConfigurationError("batch_size must be positive")
    with engine.connect() as conn:
        plan = _plan(conn, now, default_days, overrides)
    total = sum(count for _, _, count in plan)
    done = 0
    if progress is not None:
        progress(0, total)
    deleted: dict[str, int] = {}
    checkpoints: dict[str, int] = {}
    for tenant_id, upto, _ in plan:
        while True:
            batch = _purge_batch(engine, tenant_id, upto, batch_size, now)
            if batch is None:
                break
            count, seq = batch
            deleted[tenant_id] = deleted.get(tenant_id, 0) + count
            checkpoints[tenant_id] = seq
            done += count
            if progress is not None:
                progress(done, total)
    return PurgeResult(deleted=done, per_tenant=deleted, checkpoints=checkpoints)


# A retention reaching back before year 1 cannot be a cutoff date.
MAX_RETENTION_DAYS = 365_000


def _check_days(days: object, name: str) -> None:
    if isinstance(days, bool) or not isinstance(days, int) or not 1 <= days <= MAX_RETENTION_DAYS:
        raise ConfigurationError(
            f"{name} must be a whole number of days from 1 to {MAX_RETENTION_DAYS}"
        )


def _plan(
    conn: Connection, now: datetime, default_days: int, overrides: Mapping[str, int]
) -> list[tuple[str, int, int]]:
    """Return ``(tenant, last seq to delete, how many)`` for every tenant with work."""
    plan = []
    tenants = conn.execute(select(LOG.c.tenant_id).distinct().order_by(LOG.c.tenant_id))
    for tenant_id in list(tenants.scalars()):
        cutoff = now - timedelta(days=overrides.get(tenant_id, default_days))
        mine = LOG.c.tenant_id == tenant_id
        # Only a prefix of the chain can go: the first entry still in
        # retention keeps everything after it, even an older-stamped one.
        first_kept = conn.execute(select(func.min(LOG.c.seq)).where(mine, LOG.c.time >= cutoff))
        keep = first_kept.scalar()
        if keep is None:
            upto = conn.execute(select(func.max(LOG.c.seq)).where(mine)).scalar()
        else:
            upto = int(keep) - 1
        if not upto:
            continue
        count = conn.execute(select(func.count()).where(mine, LOG.c.seq <= upto)).scalar()
        if count:
            plan.append((tenant_id, int(upto), int(count)))
    return plan


def _purge_batch(
    engine: Engine, tenant_id: str, upto: int, batch_size: int, now: datetime
) -> tuple[int, int] | None:
    mine = LOG.c.tenant_id == tenant_id
    try:
        with engine.begin() as conn:
            if conn.dialect.name == "postgresql":
                conn.execute(select(func.set_config(PURGE_SETTING, "on", True)))
            rows = conn.execute(
                select(LOG.c.seq, LOG.c.hash)
                .where(mine, LOG.c.seq <= upto)
                .order_by(LOG.c.seq)
                .limit(batch_size)
            ).all()
            if not rows:
                return None
            last_seq, last_hash = int(rows[-1].seq), str(rows[-1].hash)
            conn.execute(delete(LOG).where(mine, LOG.c.seq <= last_seq))
            _save_checkpoint(conn, tenant_id, last_seq, last_hash, len(rows), now)
    except DBAPIError as exc:
        raise StorageError(f"purging the audit log of {tenant_id!r} failed: {exc.orig}") from exc
    return len(rows), last_seq


def _save_checkpoint(
    conn: Connection, tenant_id: str, seq: int, hash_: str, count: int, now: datetime
) -> None:
    values = {
        "tenant_id": tenant_id,
        "seq": seq,
        "hash": hash_,
        "purged_count": count,
        "purged_at": now,
    }
    dialect = conn.dialect.name
    if dialect in ("postgresql", "sqlite"):
        insert = pg_insert if dialect == "postgresql" else sqlite_insert
        stmt = insert(CHECKPOINTS).values(values)
        stmt = stmt.on_conflict_do_update(
            index_elements=[CHECKPOINTS.c.tenant_id],
            set_={
                "seq": stmt.excluded.seq,
                "hash": stmt.excluded.hash,
                "purged_at": stmt.excluded.purged_at,
                "purged_count": CHECKPOINTS.c.purged_count + stmt.excluded.purged_count,
            },
        )
        conn.execute(stmt)
        return
    updated = conn.execute(
        update(CHECKPOINTS)
        .where(CHECKPOINTS.c.tenant_id == tenant_id)
        .values(seq=seq, hash=hash_, purged_at=now, purged_count=CHECKPOINTS.c.purged_count + count)
    )
    if updated.rowcount == 0:
        conn.execute(CHECKPOINTS.insert().values(values))


_GUARD_FUNCTION = """
CREATE OR REPLACE FUNCTION tenantkit_audit_guard() RETURNS trigger
LANGUAGE plpgsql AS $fn$
DECLARE
    purging boolean := coalesce(current_setting('tenantkit.audit_purge', true), '') = 'on';
BEGIN
    IF TG_OP = 'TRUNCATE' THEN
        NULL;
    ELSIF TG_TABLE_NAME = 'tenantkit_audit_log' AND TG_OP = 'DELETE' AND purging THEN
        RETURN OLD;
    ELSIF TG_TABLE_NAME = 'tenantkit_audit_checkpoints' AND purging THEN
        IF TG_OP = 'DELETE' THEN RETURN OLD; END IF;
        RETURN NEW;
    ELSIF TG_TABLE_NAME = 'tenantkit_audit_heads' THEN
        IF TG_OP = 'DELETE' AND purging THEN RETURN OLD; END IF;
        IF TG_OP = 'UPDATE' AND NEW.tenant_id = OLD.tenant_id AND NEW.seq > OLD.seq THEN
            RETURN NEW;
        END IF;
    END IF;
    RAISE EXCEPTION 'tenantkit audit log is append-only: % on % refused', TG_OP, TG_TABLE_NAME
        USING ERRCODE = 'insufficient_privilege',
              HINT = 'only the retention job (tenantkit audit purge) removes entries';
END
$fn$
"""

_TRIGGERS = (
    ("tenantkit_audit_log", "guard", "BEFORE UPDATE OR DELETE", "ROW"),
    ("tenantkit_audit_log", "truncate", "BEFORE TRUNCATE", "STATEMENT"),
    ("tenantkit_audit_checkpoints", "guard", "BEFORE INSERT OR UPDATE OR DELETE", "ROW"),
    ("tenantkit_audit_checkpoints", "truncate", "BEFORE TRUNCATE", "STATEMENT"),
    ("tenantkit_audit_heads", "guard", "BEFORE UPDATE OR DELETE", "ROW"),
    ("tenantkit_audit_heads", "truncate", "BEFORE TRUNCATE", "STATEMENT"),
)

_PRIVILEGES = (
    ("tenantkit_audit_log", "SELECT, INSERT", "UPDATE, DELETE, TRUNCATE"),
    ("tenantkit_audit_heads", "SELECT, INSERT, UPDATE", "DELETE, TRUNCATE"),
    ("tenantkit_audit_checkpoints", "SELECT", "INSERT, UPDATE, DELETE, TRUNCATE"),
)


def protect(engine: Engine, app_role: str) -> None:
    """Make the audit tables append-only for ``app_role`` on PostgreSQL (idempotent).

    Run it as the tables' owner after creating them. The role may read and
    append; UPDATE is refused to everyone, DELETE to all but ``purge``.
    """
    if engine.dialect.name != "postgresql":
        raise ConfigurationError(
            f"protect() needs PostgreSQL (roles and triggers), not {engine.dialect.name}"
        )
    if not isinstance(app_role, str) or not app_role:
        raise ConfigurationError("app_role must name a PostgreSQL role")
    role = engine.dialect.identifier_preparer.quote(app_role)
    try:
        with engine.begin() as conn:
            conn.execute(text(_GUARD_FUNCTION))
            for table, name, when, level in _TRIGGERS:
                trigger = f"{table}_{name}"
                conn.execute(text(f"DROP TRIGGER IF EXISTS {trigger} ON {table}"))
                conn.execute(
                    text(
                        f"CREATE TRIGGER {trigger} {when} ON {table} FOR EACH {level} "
                        "EXECUTE FUNCTION tenantkit_audit_guard()"
                    )
                )
            for table, granted, revoked in _PRIVILEGES:
                conn.execute(text(f"REVOKE {revoked} ON {table} FROM {role}"))
                conn.execute(text(f"GRANT {granted} ON {table} TO {role}"))
    except DBAPIError as exc:
        raise ConfigurationError(f"protect() failed for role {app_role!r}: {exc.orig}") from exc
