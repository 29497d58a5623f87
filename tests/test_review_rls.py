"""create_app_role with odd passwords: accepted, and never echoed in an error."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import URL, Engine

from tenantkit.errors import StorageError
from tenantkit.rls import create_app_role, drop_app_role


@pytest.fixture
def owner(postgres_url: URL) -> Iterator[Engine]:
    engine = create_engine(postgres_url)
    yield engine
    engine.dispose()


@pytest.fixture
def role(owner: Engine) -> Iterator[str]:
    name = f"tk_review_{uuid.uuid4().hex[:10]}"  # roles are cluster-wide: unique, dropped after
    yield name
    drop_app_role(owner, name)


@pytest.mark.parametrize("password", [":secret", "p-:x1 %s %(a)s 50%", "it's:ok"])
def test_password_with_colons_and_percents_logs_in(
    owner: Engine, role: str, postgres_url: URL, password: str
) -> None:
    """A password holding ':name', '%s' or a quote is accepted and the role can log in."""
    create_app_role(owner, role, password=password)
    login = create_engine(postgres_url.set(username=role, password=password))
    try:
        with login.connect() as conn:
            assert conn.execute(text("SELECT current_user")).scalar() == role
    finally:
        login.dispose()


def test_a_failed_create_does_not_echo_the_password(owner: Engine, role: str) -> None:
    """Creating a role that exists fails with the password redacted from the error."""
    create_app_role(owner, role, password="first-Secret-1")
    with pytest.raises(StorageError) as caught:
        create_app_role(owner, role, password="second-Secret-2")
    assert "second-Secret-2" not in str(caught.value)
    assert caught.value.__cause__ is None and caught.value.__suppress_context__


def test_role_name_with_a_trailing_newline_is_refused() -> None:
    """'app\\n' passed the role-name check ($ matches before a newline) into unquoted DDL."""
    from sqlalchemy import Column, Integer, MetaData, Table

    from tenantkit.errors import ConfigurationError
    from tenantkit.rls import grant_ddl

    table = Table("rv_things", MetaData(), Column("id", Integer, primary_key=True))
    with pytest.raises(ConfigurationError, match="role name"):
        grant_ddl([table], "app\n")
    assert grant_ddl([table], "app")[0] == "GRANT USAGE ON SCHEMA public TO app"
