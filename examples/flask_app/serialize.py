"""JSON helpers shared by the views."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from typing import Any

from flask import Response, jsonify

from .models import Membership, Organization, Project, User


def iso(value: datetime | None) -> str | None:
    """Return an RFC 3339 UTC time (``...Z``) or ``None``."""
    return None if value is None else value.isoformat().replace("+00:00", "Z")


def created(body: dict[str, Any], location: str | None = None) -> Response:
    """Return a 201 response, with ``Location`` when the resource has a URL."""
    response = jsonify(body)
    response.status_code = 201
    if location is not None:
        response.headers["Location"] = location
    return response


def page(items: Iterable[dict[str, Any]], next_cursor: str | None) -> dict[str, Any]:
    """Return the list envelope every list route uses."""
    return {"items": list(items), "next_cursor": next_cursor}


def user_dict(user: User) -> dict[str, Any]:
    """Return a user's public fields."""
    return {
        "id": user.id,
        "email": user.email,
        "name": user.name,
        "mfa_enabled": user.totp_enabled,
        "created_at": iso(user.created_at),
    }


def member_dict(member: Membership, user: User) -> dict[str, Any]:
    """Return a user as a member of one organization."""
    return {
        "user_id": user.id,
        "email": user.email,
        "name": user.name,
        "role": member.role,
        "status": member.status,
        "projects": list(member.projects),
        "mfa_enabled": user.totp_enabled,
        "version": member.version,
        "invited_at": iso(member.created_at) if member.invited_by else None,
        "joined_at": iso(member.joined_at),
        "updated_at": iso(member.updated_at),
    }


def settings_dict(org: Organization) -> dict[str, Any]:
    """Return an organization's settings."""
    return {
        "require_mfa": org.require_mfa,
        "allowed_domains": list(org.allowed_domains),
        "session_timeout": org.session_timeout,
    }


def project_dict(project: Project) -> dict[str, Any]:
    """Return a project."""
    return {
        "id": project.id,
        "org_id": project.tenant_id,
        "name": project.name,
        "slug": project.slug,
        "type": project.type,
        "environment": project.environment,
        "team": [dict(member) for member in project.team],
        "version": project.version,
        "created_by": project.created_by,
        "created_at": iso(project.created_at),
        "updated_at": iso(project.updated_at),
    }
