"""Users of a tenant: add one, find one. Always called inside a scoped session."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from tenantkit.errors import Conflict

from .models import User


def add_user(
    session: Session,
    *,
    email: str,
    name: str,
    role: str = "MEMBER",
    password_hash: str | None = None,
) -> User:
    """Add a user to the tenant in context; 409 if the email is taken in this tenant."""
    if find_user(session, email) is not None:
        raise Conflict(f"a user with email {email!r} already exists", field="email")
    user = User(email=email, name=name, role=role, password_hash=password_hash)
    session.add(user)
    try:
        session.flush()
    except IntegrityError as exc:  # a concurrent request took the email first
        raise Conflict(f"a user with email {email!r} already exists", field="email") from exc
    return user


def find_user(session: Session, email: str) -> User | None:
    """Return the tenant's user with ``email``, if any."""
    return session.scalars(select(User).where(User.email == email)).one_or_none()
