"""Settings: keyword arguments, TENANTKIT_* environment variables, Flask-style mappings."""

from __future__ import annotations

import dataclasses

import pytest

from tenantkit.errors import ConfigurationError
from tenantkit.kit import TenantKit
from tenantkit.settings import JWTSettings, Settings


def test_defaults_are_safe() -> None:
    """The default settings need a credential and never trust a bare tenant header."""
    settings = Settings()
    assert settings.require_credential is True
    assert settings.trust_tenant_header is False
    assert "header" not in settings.resolvers
    assert settings.quota.storage_uri == "memory://"


def test_frozen() -> None:
    """Settings cannot be mutated after construction."""
    settings = Settings()
    with pytest.raises(dataclasses.FrozenInstanceError):
        settings.max_body_bytes = 1  # type: ignore[misc]


def test_keyword_only() -> None:
    """Positional arguments are refused: every option is named at the call site."""
    with pytest.raises(TypeError):
        Settings("sqlite://")  # type: ignore[misc]


def test_from_env_parses_types_and_groups() -> None:
    """Environment strings become ints, floats, bools, tuples and nested groups."""
    settings = Settings.from_env(
        {
            "TENANTKIT_DATABASE_URL": "sqlite:///x.db",
            "TENANTKIT_RESOLVERS": "jwt, api_key",
            "TENANTKIT_MAX_BODY_BYTES": "2048",
            "TENANTKIT_REQUIRE_CREDENTIAL": "no",
            "TENANTKIT_JWT_SECRET": "s3cret",
            "TENANTKIT_JWT_ALGORITHMS": "HS256",
            "TENANTKIT_JWT_AUDIENCE": "",
            "TENANTKIT_CACHE_TTL_SECONDS": "2.5",
            "TENANTKIT_QUOTA_STORAGE_URI": "redis://127.0.0.1:6379/0",
            "TENANTKIT_QUOTA_ON_FAILURE": "fail_open",
            "UNRELATED": "ignored",
        }
    )
    assert settings.database_url == "sqlite:///x.db"
    assert settings.resolvers == ("jwt", "api_key")
    assert settings.max_body_bytes == 2048
    assert settings.require_credential is False
    assert settings.jwt == JWTSettings(secret="s3cret", algorithms=("HS256",), audience=None)
    assert settings.cache.ttl_seconds == 2.5
    assert settings.quota.storage_uri == "redis://127.0.0.1:6379/0"
    assert settings.quota.on_failure == "fail_open"


def test_overrides_win_over_environment() -> None:
    """Keyword arguments given to from_env take precedence over variables."""
    settings = Settings.from_env({"TENANTKIT_MAX_BODY_BYTES": "10"}, max_body_bytes=20)
    assert settings.max_body_bytes == 20


def test_from_mapping_accepts_native_values() -> None:
    """A Flask config holds Python values, not strings; they pass through."""
    settings = Settings.from_mapping(
        {"TENANTKIT_EXCLUDE_PATHS": ["/health", "/admin"], "TENANTKIT_MAX_BODY_BYTES": 99}
    )
    assert settings.exclude_paths == ("/health", "/admin")
    assert settings.max_body_bytes == 99


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"TENANTKIT_MAX_BODY_BYTES": "lots"}, "TENANTKIT_MAX_BODY_BYTES"),
        ({"TENANTKIT_REQUIRE_CREDENTIAL": "maybe"}, "not a boolean"),
        ({"TENANTKIT_RESOLVERS": "header"}, "trusted gateway"),
        ({"TENANTKIT_RESOLVERS": "subdomain"}, "base_domain"),
        ({"TENANTKIT_RESOLVERS": "path"}, "path_prefix"),
        ({"TENANTKIT_MAX_BODY_BYTES": "0"}, "positive"),
    ],
)
def test_bad_configuration_is_a_clear_error(env: dict[str, str], message: str) -> None:
    """A malformed or unsafe configuration raises ConfigurationError naming the problem."""
    with pytest.raises(ConfigurationError, match=message):
        Settings.from_env(env)


def test_header_mode_needs_explicit_trust() -> None:
    """The header resolver is accepted once trust_tenant_header is set."""
    settings = Settings(resolvers=("header",), trust_tenant_header=True, require_credential=False)
    assert settings.resolvers == ("header",)


def test_configuration_error_is_a_value_error() -> None:
    """ConfigurationError also carries the built-in meaning of ValueError."""
    with pytest.raises(ValueError):
        Settings(max_body_bytes=-1)


@pytest.mark.parametrize(
    ("env", "message"),
    [
        # 0 made redis-py's blocking pool fill an unbounded queue: start-up never returned.
        ({"TENANTKIT_QUOTA_REDIS_MAX_CONNECTIONS": "0"}, "TENANTKIT_QUOTA_REDIS_MAX_CONNECTIONS"),
        ({"TENANTKIT_QUOTA_REDIS_MAX_CONNECTIONS": "-1"}, "TENANTKIT_QUOTA_REDIS_MAX_CONNECTIONS"),
        ({"TENANTKIT_DATABASE_URL": ""}, "TENANTKIT_DATABASE_URL"),
        ({"TENANTKIT_DATABASE_URL": "not a url"}, "TENANTKIT_DATABASE_URL"),
        ({"TENANTKIT_DATABASE_URL": "nosuchdb://x/y"}, "TENANTKIT_DATABASE_URL"),
        ({"TENANTKIT_DATABASE_URL": "postgresql://u:pw@host:port/db"}, "TENANTKIT_DATABASE_URL"),
        # A negative or NaN cache setting turned the cache off without a word (0 does, as told).
        ({"TENANTKIT_CACHE_TTL_SECONDS": "-5"}, "TENANTKIT_CACHE_TTL_SECONDS"),
        ({"TENANTKIT_CACHE_TTL_SECONDS": "nan"}, "TENANTKIT_CACHE_TTL_SECONDS"),
        ({"TENANTKIT_CACHE_NEGATIVE_TTL_SECONDS": "inf"}, "TENANTKIT_CACHE_NEGATIVE_TTL_SECONDS"),
        ({"TENANTKIT_CACHE_MAXSIZE": "-1"}, "TENANTKIT_CACHE_MAXSIZE"),
        # An empty header name matched nothing; one with a newline would split a response.
        ({"TENANTKIT_TENANT_HEADER": ""}, "TENANTKIT_TENANT_HEADER"),
        ({"TENANTKIT_REQUEST_ID_HEADER": "X Request"}, "TENANTKIT_REQUEST_ID_HEADER"),
        (
            {"TENANTKIT_QUOTA_TOKEN_HEADER": "X-Used\r\nSet-Cookie: a=b"},
            "TENANTKIT_QUOTA_TOKEN_HEADER",
        ),
        ({"TENANTKIT_AUDIT_RETENTION_DAYS": "0"}, "TENANTKIT_AUDIT_RETENTION_DAYS"),
    ],
)
def test_bad_kit_configuration_fails_at_start_up_naming_the_variable(
    env: dict[str, str], message: str
) -> None:
    """TenantKit.from_env refuses a setting that would hang or fail later, naming it."""
    base = {
        "TENANTKIT_DATABASE_URL": "sqlite://",
        "TENANTKIT_API_KEY_SECRET": "settings-test-" + "s" * 32,
        "TENANTKIT_QUOTA_STORAGE_URI": "redis://127.0.0.1:1/0",  # never connected at start-up
    }
    with pytest.raises(ConfigurationError, match=message):
        TenantKit.from_env({**base, **env})


def test_a_cache_of_zero_is_off_and_allowed() -> None:
    """0 turns the cache off, as documented: no error."""
    settings = Settings.from_env(
        {"TENANTKIT_CACHE_TTL_SECONDS": "0", "TENANTKIT_CACHE_MAXSIZE": "0"}
    )
    assert (settings.cache.ttl_seconds, settings.cache.maxsize) == (0, 0)
