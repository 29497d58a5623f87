"""The platform's tables: users (global), and per-organization data scoped by tenant.

An organization *is* a tenant: its id is the tenant id and every row that
belongs to it carries ``tenant_id`` through ``TenantScoped``, so the scoped
session filters and stamps it and PostgreSQL row-level security enforces it.
Users are global (one person, one login, several organizations); what a user
may do in an organization lives in its ``Membership`` row.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, Boolean, ForeignKey, Integer, MetaData, String
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from tenantkit._db import NAMING_CONVENTION, UTCDateTime, utcnow
from tenantkit.scoping import TenantScoped, tenant_unique

ROLES = ("owner", "admin", "member")
ADMIN_ROLES = frozenset({"owner", "admin"})
MEMBERSHIP_STATUSES = ("active", "invited", "suspended")


class Base(DeclarativeBase):
    """Declarative base of the example's own tables."""

    metadata = MetaData(naming_convention=NAMING_CONVENTION)


class User(Base):
    """A person who can sign in; ``password_hash`` is empty until an invitation is accepted."""

    __tablename__ = "app_users"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    email: Mapped[str] = mapped_column(String(254), nullable=False, unique=True)
    name: Mapped[str] = mapped_column(String(200), nullable=False, default="")
    password_hash: Mapped[str | None] = mapped_column(String(200))
    # Where a sign-in without org_id lands: the first organization joined.
    home_org_id: Mapped[str | None] = mapped_column(String(63))
    totp_secret: Mapped[str | None] = mapped_column(String(64))
    totp_enabled: Mapped[bool] = mapped_column(Boolean, nullable=False, default=False)
    # The last accepted TOTP time step: a code is good once (RFC 6238 section 5.2).
    totp_last_step: Mapped[int] = mapped_column(Integer, nullable=False, default=0)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False, default=utcnow)


class Organization(TenantScoped, Base):
    """The organization's own settings; its name, plan and status live in the tenant store."""

    __tablename__ = "app_organizations"

    id: Mapped[str] = mapped_column(String(63), primary_key=True)
    owner_id: Mapped[str] = mapped_column(ForeignKey("app_users.id"), nullable=False)
    require_mfa: Mapped[bool] = mapped_column(Boolean, nullable=False, default=False)
    allowed_domains: Mapped[list[str]] = mapped_column(JSON, nullable=False, default=list)
    session_timeout: Mapped[int] = mapped_column(Integer, nullable=False, default=60)
    version: Mapped[int] = mapped_column(Integer, nullable=False, default=1)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False, default=utcnow)

    __mapper_args__ = {"version_id_col": version}


class Membership(TenantScoped, Base):
    """A user's role, status and project access in one organization."""

    __tablename__ = "app_memberships"
    __table_args__ = (tenant_unique("user_id"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    user_id: Mapped[str] = mapped_column(ForeignKey("app_users.id"), nullable=False, index=True)
    role: Mapped[str] = mapped_column(String(16), nullable=False)
    status: Mapped[str] = mapped_column(String(16), nullable=False, default="active")
    projects: Mapped[list[str]] = mapped_column(JSON, nullable=False, default=list)
    version: Mapped[int] = mapped_column(Integer, nullable=False, default=1)
    invited_by: Mapped[str | None] = mapped_column(String(40))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False, default=utcnow)
    joined_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False, default=utcnow)

    __mapper_args__ = {"version_id_col": version}


class Invitation(TenantScoped, Base):
    """A one-time invitation; only the SHA-256 of its secret is stored."""

    __tablename__ = "app_invitations"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    token_hash: Mapped[str] = mapped_column(String(64), nullable=False, unique=True)
    email: Mapped[str] = mapped_column(String(254), nullable=False)
    user_id: Mapped[str] = mapped_column(ForeignKey("app_users.id"), nullable=False)
    role: Mapped[str] = mapped_column(String(16), nullable=False)
    projects: Mapped[list[str]] = mapped_column(JSON, nullable=False, default=list)
    invited_by: Mapped[str] = mapped_column(String(40), nullable=False)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False, default=utcnow)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False)
    accepted_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


class Project(TenantScoped, Base):
    """A project of an organization, with its team."""

    __tablename__ = "app_projects"
    __table_args__ = (tenant_unique("slug"),)

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    name: Mapped[str] = mapped_column(String(200), nullable=False)
    slug: Mapped[str] = mapped_column(String(63), nullable=False)
    type: Mapped[str] = mapped_column(String(32), nullable=False)
    environment: Mapped[str] = mapped_column(String(32), nullable=False)
    team: Mapped[list[dict[str, Any]]] = mapped_column(JSON, nullable=False, default=list)
    version: Mapped[int] = mapped_column(Integer, nullable=False, default=1)
    created_by: Mapped[str] = mapped_column(String(40), nullable=False)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False, default=utcnow)

    __mapper_args__ = {"version_id_col": version}
