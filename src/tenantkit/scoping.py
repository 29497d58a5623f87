"""Tenant-scoped SQLAlchemy: the mixin, scoped sessions, and the filters that fail closed.

(Seed: the mixin below is the contract other modules build on; the scoped
session machinery is being built by the data-layer work.)
"""

from __future__ import annotations

from sqlalchemy import String
from sqlalchemy.orm import Mapped, declared_attr, mapped_column


class TenantScoped:
    """Mixin: a non-null, indexed ``tenant_id`` column; rows belong to one tenant."""

    @declared_attr
    def tenant_id(cls) -> Mapped[str]:
        return mapped_column(String(63), nullable=False, index=True)
