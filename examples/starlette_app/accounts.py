"""Users of a tenant: add one, find one. Always called inside a scoped session."""

from __future__ import annotations

import hashlib

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from tenantkit.errors import Conflict

from .models import User

#: The audit log's limit on an actor's length.
MAX_ACTOR = 255


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


def email_actor(kind: str, email: str) -> str:
    """Return the audit actor ``kind:email``, shortened to fit when the email is very long."""
    actor = f"{kind}:{email}"
    if len(actor) <= MAX_ACTOR:
        return actor
    # Still unique per email: a prefix and a digest of the whole address.
    digest = hashlib.sha256(email.encode()).hexdigest()[:16]
    return f"{actor[: MAX_ACTOR - len(digest) - 1]}~{digest}"
