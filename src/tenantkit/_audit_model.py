"""The audit tables and the ``AuditEntry`` value read back from them.

Three tables on the shared ``Base``:

- ``tenantkit_audit_log``: the entries, keyed by ``(tenant_id, seq)``;
- ``tenantkit_audit_heads``: one row per tenant with the last seq and hash,
  locked by every writer so concurrent writers append one after another;
- ``tenantkit_audit_checkpoints``: one row per tenant with the seq and hash of
  the last purged entry, where ``verify`` starts once old entries are gone.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, cast

from sqlalchemy import JSON, BigInteger, Index, Integer, Row, String, Table
from sqlalchemy.orm import Mapped, mapped_column

from ._db import Base, UTCDateTime, utcnow

# SQLite only auto-increments INTEGER; seq is assigned by the chain, but keep
# the column type portable and 64-bit where it matters.
SeqType = BigInteger().with_variant(Integer(), "sqlite")
HASH_LENGTH = 64
GENESIS_HASH = "0" * HASH_LENGTH


class AuditRow(Base):
    """One stored audit entry (use ``AuditEntry`` outside this package)."""

    __tablename__ = "tenantkit_audit_log"
    __table_args__ = (
        Index("ix_tenantkit_audit_log_tenant_time", "tenant_id", "time"),
        Index(
            "ix_tenantkit_audit_log_tenant_resource", "tenant_id", "resource_type", "resource_id"
        ),
    )

    tenant_id: Mapped[str] = mapped_column(String(63), primary_key=True)
    seq: Mapped[int] = mapped_column(SeqType, primary_key=True, autoincrement=False)
    time: Mapped[datetime] = mapped_column(UTCDateTime(), nullable=False)
    actor: Mapped[str] = mapped_column(String(255), nullable=False)
    action: Mapped[str] = mapped_column(String(128), nullable=False)
    resource_type: Mapped[str | None] = mapped_column(String(128))
    resource_id: Mapped[str | None] = mapped_column(String(255))
    changes: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    meta: Mapped[dict[str, Any] | None] = mapped_column("metadata", JSON)
    request_id: Mapped[str | None] = mapped_column(String(128))
    client_ip: Mapped[str | None] = mapped_column(String(64))
    user_agent: Mapped[str | None] = mapped_column(String(512))
    prev_hash: Mapped[str] = mapped_column(String(HASH_LENGTH), nullable=False)
    hash: Mapped[str] = mapped_column(String(HASH_LENGTH), nullable=False)


class AuditHead(Base):
    """The last seq and hash of one tenant's chain; the row writers lock."""

    __tablename__ = "tenantkit_audit_heads"

    tenant_id: Mapped[str] = mapped_column(String(63), primary_key=True)
    seq: Mapped[int] = mapped_column(SeqType, nullable=False, default=0)
    hash: Mapped[str] = mapped_column(String(HASH_LENGTH), nullable=False, default=GENESIS_HASH)


class AuditCheckpoint(Base):
    """The seq and hash of the last purged entry of one tenant."""

    __tablename__ = "tenantkit_audit_checkpoints"

    tenant_id: Mapped[str] = mapped_column(String(63), primary_key=True)
    seq: Mapped[int] = mapped_column(SeqType, nullable=False)
    hash: Mapped[str] = mapped_column(String(HASH_LENGTH), nullable=False)
    purged_count: Mapped[int] = mapped_column(SeqType, nullable=False, default=0)
    purged_at: Mapped[datetime] = mapped_column(UTCDateTime(), nullable=False, default=utcnow)


LOG = cast(Table, AuditRow.__table__)
HEADS = cast(Table, AuditHead.__table__)
CHECKPOINTS = cast(Table, AuditCheckpoint.__table__)
AUDIT_TABLES = (LOG, HEADS, CHECKPOINTS)

# Column names in the order the canonical hash and exports list them.
ENTRY_FIELDS = (
    "tenant_id",
    "seq",
    "time",
    "actor",
    "action",
    "resource_type",
    "resource_id",
    "changes",
    "metadata",
    "request_id",
    "client_ip",
    "user_agent",
    "prev_hash",
    "hash",
)


@dataclass(frozen=True, slots=True)
class AuditEntry:
    """One audit entry as written: immutable, hashed and chained to its predecessor.

    ``changes`` maps a field to ``[before, after]``; ``metadata`` holds the
    details of an explicit event.
    """

    tenant_id: str
    seq: int
    time: datetime
    actor: str
    action: str
    resource_type: str | None
    resource_id: str | None
    changes: Mapping[str, Any] | None
    metadata: Mapping[str, Any] | None
    request_id: str | None
    client_ip: str | None
    user_agent: str | None
    prev_hash: str
    hash: str

    def to_dict(self) -> dict[str, Any]:
        """Return the entry as JSON-ready values (time in RFC 3339 UTC)."""
        data: dict[str, Any] = {name: getattr(self, name) for name in ENTRY_FIELDS}
        data["time"] = format_time(self.time)
        return data


def format_time(value: datetime) -> str:
    """Render a UTC time the one way the hash and exports use (microseconds, ``Z``)."""
    return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def entry_from_row(row: Row[Any]) -> AuditEntry:
    """Build an ``AuditEntry`` from a row of ``tenantkit_audit_log``."""
    values = row._mapping
    return AuditEntry(
        tenant_id=values["tenant_id"],
        seq=int(values["seq"]),
        time=values["time"],
        actor=values["actor"],
        action=values["action"],
        resource_type=values["resource_type"],
        resource_id=values["resource_id"],
        changes=values["changes"],
        metadata=values["metadata"],
        request_id=values["request_id"],
        client_ip=values["client_ip"],
        user_agent=values["user_agent"],
        prev_hash=values["prev_hash"],
        hash=values["hash"],
    )
