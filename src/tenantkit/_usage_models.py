"""Tables of usage metering: events (with their Stripe meter sync status) and alerts sent."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any, Literal, cast

from sqlalchemy import (
    JSON,
    BigInteger,
    ColumnElement,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
    func,
    insert,
    literal,
)
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Mapped, Session, mapped_column
from sqlalchemy.schema import Table

from ._db import Base, UTCDateTime, utcnow
from .scoping import TenantScoped

#: Quantities are summed as two halves of this many bits (see ``quantity_sums``).
_LOW_BITS = 32
_LOW_MASK = (1 << _LOW_BITS) - 1

MeterStatus = Literal["pending", "sending", "sent", "failed", "skipped"]
METER_STATUSES: tuple[MeterStatus, ...] = ("pending", "sending", "sent", "failed", "skipped")


class UsageEvent(TenantScoped, Base):
    """One usage event; ``(tenant_id, idempotency_key)`` is unique for good.

    The ``meter_*`` columns say what happened to the event on its way to
    Stripe: ``pending`` (not yet sent, or waiting ``meter_next_attempt_at``
    after a transient failure), ``sending`` (claimed by a sync run),
    ``sent``, ``failed`` (``meter_error`` says why) or ``skipped`` (no meter
    is configured for its type).
    """

    __tablename__ = "tenantkit_usage_events"
    __table_args__ = (
        UniqueConstraint("tenant_id", "idempotency_key"),
        Index("ix_tenantkit_usage_events_tenant_time", "tenant_id", "occurred_at"),
        Index("ix_tenantkit_usage_events_meter", "meter_status", "meter_next_attempt_at"),
    )

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    project_id: Mapped[str | None] = mapped_column(String(64))
    type: Mapped[str] = mapped_column(String(64))
    quantity: Mapped[int] = mapped_column(BigInteger)
    meta: Mapped[dict[str, Any]] = mapped_column("metadata", JSON, default=dict)
    occurred_at: Mapped[datetime] = mapped_column(UTCDateTime)
    recorded_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    idempotency_key: Mapped[str | None] = mapped_column(String(255))
    meter_status: Mapped[str] = mapped_column(String(16), default="pending")
    meter_attempts: Mapped[int] = mapped_column(Integer, default=0)
    meter_next_attempt_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    meter_claimed_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    meter_sent_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    meter_error: Mapped[str | None] = mapped_column(Text)


class UsageAlertSent(TenantScoped, Base):
    """A usage alert already delivered: one per tenant, cycle, resource and threshold."""

    __tablename__ = "tenantkit_usage_alerts"
    __table_args__ = (UniqueConstraint("tenant_id", "cycle", "resource", "threshold"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    cycle: Mapped[str] = mapped_column(String(7))
    resource: Mapped[str] = mapped_column(String(32))
    threshold: Mapped[int] = mapped_column(Integer)
    used: Mapped[int] = mapped_column(BigInteger)
    limit: Mapped[int] = mapped_column(BigInteger)
    sent_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


def quantity_sums() -> tuple[ColumnElement[int], ColumnElement[int]]:
    """Return ``SUM(quantity)`` as two sums, its high and low 32 bits, for ``joined_sum``.

    1,025 events of the largest quantity (2**53) already sum past a 64-bit
    integer: SQLite's SUM then raises "integer overflow". Each half stays far
    below that for billions of events; PostgreSQL would not overflow either
    way (its SUM of a BIGINT is a NUMERIC), but one query serves both.
    """
    quantity = UsageEvent.quantity
    shift = literal(_LOW_BITS, Integer)  # PostgreSQL has BIGINT >> INTEGER, not >> BIGINT
    return (
        func.coalesce(func.sum(quantity.bitwise_rshift(shift)), 0),
        func.coalesce(func.sum(quantity.bitwise_and(_LOW_MASK)), 0),
    )


def joined_sum(high: Any, low: Any) -> int:
    """Return the exact total of the two sums ``quantity_sums`` selects."""
    return (int(high) << _LOW_BITS) + int(low)


def insert_or_ignore(
    session: Session, table: Table, values: dict[str, Any], conflict: Sequence[str]
) -> bool:
    """Insert a row unless one with the same ``conflict`` columns exists; return if inserted.

    Concurrent writers of the same key are safe: PostgreSQL and SQLite use
    ``ON CONFLICT DO NOTHING`` (the loser waits for the winner's commit), other
    databases a savepoint that swallows the ``IntegrityError``.
    """
    dialect = session.get_bind().dialect.name
    if dialect in ("postgresql", "sqlite"):
        make = pg_insert if dialect == "postgresql" else sqlite_insert
        stmt = (
            make(table)
            .values(values)
            .on_conflict_do_nothing(index_elements=list(conflict))
            .returning(table.c[conflict[0]])
        )
        return session.execute(stmt).first() is not None
    try:
        with session.begin_nested():
            session.execute(insert(table).values(values))
    except IntegrityError:
        return False
    return True


def table_of(model: type[Base]) -> Table:
    """Return the ``Table`` behind a mapped class."""
    return cast(Table, model.__table__)
