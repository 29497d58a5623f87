"""What is audited and how values are written: opt-in/out, names, redaction, JSON values."""

from __future__ import annotations

import enum
import uuid
from datetime import UTC, date, datetime
from decimal import Decimal

import pytest

from tenantkit import audit
from tenantkit._audit_policy import diff, jsonable, resource_type_of
from test_audit_support import Contact, Note, Project


@pytest.mark.parametrize(
    "name",
    [
        "password",
        "password_hash",
        "api_key",
        "apiKey",
        "client_secret",
        "refresh_token",
        "PrivateKey",
        "totp_secret",
        "salt",
        "ssn",
    ],
)
def test_secret_names_are_recognised(name: str) -> None:
    """Names containing a secret word (any case, snake or camel) are redacted."""
    assert audit.is_secret_name(name)


@pytest.mark.parametrize(
    "name", ["name", "quota_tokens_per_minute", "hashtag", "keyboard", "pinned", "description"]
)
def test_ordinary_names_are_not_secrets(name: str) -> None:
    """Words that merely contain a secret word are kept."""
    assert not audit.is_secret_name(name)


def test_default_and_explicit_audit_choices() -> None:
    """Tenant-scoped models are audited unless they opt out; others only by opting in."""
    assert audit.is_audited(Project)
    assert not audit.is_audited(Note)
    assert audit.is_audited(Contact)

    class Plain:
        pass

    assert not audit.is_audited(Plain)
    assert audit.is_audited(audit.audited(Plain))


def test_resource_type_names() -> None:
    """Resource types are snake_case class names unless configured."""

    class APIKey:
        pass

    class TeamMember:
        pass

    assert (resource_type_of(APIKey), resource_type_of(TeamMember)) == ("api_key", "team_member")
    assert resource_type_of(Contact) == "person"


def test_values_become_stable_json() -> None:
    """Column values convert to JSON that reads back the same way."""

    class Color(enum.Enum):
        RED = "red"

    key = uuid.UUID(int=1)
    assert jsonable(
        {
            "when": datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC),
            "day": date(2026, 1, 2),
            "amount": Decimal("9.99"),
            "id": key,
            "color": Color.RED,
            "blob": b"\x00\x01",
            "tags": {"b", "a"},
            "nan": float("nan"),
        }
    ) == {
        "when": "2026-01-02T03:04:05+00:00",
        "day": "2026-01-02",
        "amount": "9.99",
        "id": str(key),
        "color": "red",
        "blob": "base64:AAE=",
        "tags": ["a", "b"],
        "nan": "nan",
    }


def test_diff_reports_only_changes_and_redacts() -> None:
    """diff lists changed fields, hides redacted values, and skips unchanged ones."""
    fields = [("name", False), ("secret", True), ("same", False)]
    before = {"name": "a", "secret": "s1", "same": 1}
    after = {"name": "b", "secret": "s2", "same": 1}
    assert diff(fields, before, after) == {
        "name": ["a", "b"],
        "secret": [audit.REDACTED, audit.REDACTED],
    }
    assert diff(fields, None, {"name": "a", "secret": None}) == {"name": [None, "a"]}
