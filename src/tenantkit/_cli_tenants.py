"""The ``tenants`` and ``api-keys`` CLI commands.

``register`` adds them to the ``tenantkit`` parser; each handler takes the
parsed arguments, prints JSON on stdout and returns the exit code: 0 on
success, 1 with a one-line message on stderr for an error a user can fix.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import inspect
from sqlalchemy.engine import Engine
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session

from ._db import make_engine
from ._stores import storage_errors
from .apikeys import APIKeyRow, APIKeyStore, api_key_to_dict
from .errors import ConfigurationError, StorageError, TenantKitError, ValidationError
from .settings import Settings
from .tenants import TenantRow, TenantStore, tenant_to_dict

Handler = Callable[[argparse.Namespace], int]

UNRESTRICTED = "*"


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the ``tenants`` and ``api-keys`` command groups to ``sub``."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--database-url",
        help="SQLAlchemy URL of the tenant database (default: TENANTKIT_DATABASE_URL)",
    )
    _register_tenants(sub, common)
    _register_api_keys(sub, common)


def _register_tenants(
    sub: argparse._SubParsersAction[argparse.ArgumentParser], common: argparse.ArgumentParser
) -> None:
    group = sub.add_parser("tenants", help="list, create, update, suspend and delete tenants")
    commands = group.add_subparsers(dest="tenants_command", metavar="COMMAND", required=True)

    p = commands.add_parser("list", parents=[common], help="list tenants (JSON page)")
    _paging(p)
    p.set_defaults(func=tenants_list)

    p = commands.add_parser("show", parents=[common], help="show one tenant")
    p.add_argument("tenant_id")
    p.set_defaults(func=tenants_show)

    p = commands.add_parser("create", parents=[common], help="create a tenant")
    p.add_argument("tenant_id", help="^[a-z0-9][a-z0-9-]{1,62}$")
    _tenant_fields(p, default=None)
    p.set_defaults(func=tenants_create)

    p = commands.add_parser("update", parents=[common], help="change a tenant's fields")
    p.add_argument("tenant_id")
    _tenant_fields(p, default=argparse.SUPPRESS)
    p.add_argument("--status", choices=["active", "suspended"], default=argparse.SUPPRESS)
    p.add_argument(
        "--expected-version",
        type=int,
        help="write only if the tenant is still at this version (else exit 1)",
    )
    p.set_defaults(func=tenants_update)

    p = commands.add_parser("suspend", parents=[common], help="suspend a tenant (403 on requests)")
    p.add_argument("tenant_id")
    p.set_defaults(func=tenants_suspend)

    p = commands.add_parser("activate", parents=[common], help="re-activate a suspended tenant")
    p.add_argument("tenant_id")
    p.set_defaults(func=tenants_activate)

    p = commands.add_parser("delete", parents=[common], help="delete a tenant and its API keys")
    p.add_argument("tenant_id")
    p.set_defaults(func=tenants_delete)


def _register_api_keys(
    sub: argparse._SubParsersAction[argparse.ArgumentParser], common: argparse.ArgumentParser
) -> None:
    group = sub.add_parser("api-keys", help="issue, list and revoke API keys")
    commands = group.add_subparsers(dest="api_keys_command", metavar="COMMAND", required=True)

    p = commands.add_parser("issue", parents=[common], help="issue a key (printed once)")
    p.add_argument("tenant_id")
    p.add_argument("--name", required=True)
    p.add_argument("--scope", action="append", default=[], dest="scopes", help="repeatable")
    expiry = p.add_mutually_exclusive_group()
    expiry.add_argument(
        "--expires-at", type=_datetime, help="RFC 3339 time, e.g. 2030-01-01T00:00Z"
    )
    expiry.add_argument("--expires-in-days", type=_positive_int)
    p.add_argument("--rate-limit", type=_positive_int, help="requests per minute for this key")
    p.add_argument("--token-limit", type=_positive_int, help="tokens per minute for this key")
    p.add_argument("--project-id")
    p.add_argument("--environment", choices=["live", "test"])
    p.set_defaults(func=api_keys_issue)

    p = commands.add_parser("list", parents=[common], help="list a tenant's keys (never the key)")
    p.add_argument("tenant_id")
    _paging(p)
    p.set_defaults(func=api_keys_list)

    p = commands.add_parser("revoke", parents=[common], help="revoke a key")
    p.add_argument("tenant_id")
    p.add_argument("key_id")
    p.set_defaults(func=api_keys_revoke)


def _tenant_fields(p: argparse.ArgumentParser, *, default: Any) -> None:
    p.add_argument("--name", default=default)
    p.add_argument("--plan", default=default)
    if default is None:
        p.add_argument("--status", choices=["active", "suspended"], default="active")
    p.add_argument(
        "--quota-requests-per-minute", "--rpm", type=_optional_int, default=default,
        dest="quota_requests_per_minute", help="an integer, or 'none' for no quota",
    )  # fmt: skip
    p.add_argument(
        "--quota-tokens-per-minute", "--tpm", type=_optional_int, default=default,
        dest="quota_tokens_per_minute", help="an integer, or 'none' for no quota",
    )  # fmt: skip
    allow_help = f"comma-separated; '' allows nothing, '{UNRESTRICTED}' allows everything"
    p.add_argument("--allowed-models", type=_allow_list, default=default, help=allow_help)
    p.add_argument("--allowed-tools", type=_allow_list, default=default, help=allow_help)
    p.add_argument("--metadata", type=_json_object, default=default, help="a JSON object")


def _paging(p: argparse.ArgumentParser) -> None:
    p.add_argument("--limit", type=int, default=50, help="1..200 (default 50)")
    p.add_argument("--cursor", help="next_cursor of the previous page")


# -- handlers -----------------------------------------------------------------


def tenants_list(args: argparse.Namespace) -> int:
    """Print one page of tenants."""
    with _user_errors(), _tenant_store(args) as store:
        page = store.list(limit=args.limit, cursor=args.cursor)
        return _print(
            {"items": [tenant_to_dict(t) for t in page.items], "next_cursor": page.next_cursor}
        )
    return 1


def tenants_show(args: argparse.Namespace) -> int:
    """Print one tenant."""
    with _user_errors(), _tenant_store(args) as store:
        return _print(tenant_to_dict(store.get(args.tenant_id)))
    return 1


def tenants_create(args: argparse.Namespace) -> int:
    """Create a tenant and print it."""
    with _user_errors(), _tenant_store(args, create=True) as store:
        config = store.create(
            id=args.tenant_id,
            name=args.name,
            status=args.status,
            plan="free" if args.plan is None else args.plan,
            quota_requests_per_minute=args.quota_requests_per_minute,
            quota_tokens_per_minute=args.quota_tokens_per_minute,
            allowed_models=args.allowed_models,
            allowed_tools=args.allowed_tools,
            metadata=args.metadata,
        )
        return _print(tenant_to_dict(config))
    return 1


def tenants_update(args: argparse.Namespace) -> int:
    """Change the given fields of a tenant and print it."""
    fields = {
        name: getattr(args, name)
        for name in (
            "name",
            "plan",
            "status",
            "quota_requests_per_minute",
            "quota_tokens_per_minute",
            "allowed_models",
            "allowed_tools",
            "metadata",
        )
        if hasattr(args, name)
    }
    with _user_errors(), _tenant_store(args) as store:
        config = store.update(args.tenant_id, expected_version=args.expected_version, **fields)
        return _print(tenant_to_dict(config))
    return 1


def tenants_suspend(args: argparse.Namespace) -> int:
    """Suspend a tenant and print it."""
    with _user_errors(), _tenant_store(args) as store:
        return _print(tenant_to_dict(store.update(args.tenant_id, status="suspended")))
    return 1


def tenants_activate(args: argparse.Namespace) -> int:
    """Re-activate a tenant and print it."""
    with _user_errors(), _tenant_store(args) as store:
        return _print(tenant_to_dict(store.update(args.tenant_id, status="active")))
    return 1


def tenants_delete(args: argparse.Namespace) -> int:
    """Delete a tenant and its API keys."""
    with _user_errors(), _tenant_store(args) as store:
        keys = store.delete(args.tenant_id)  # the keys go in the tenant's transaction
        return _print({"deleted": args.tenant_id, "api_keys_deleted": keys})
    return 1


def api_keys_issue(args: argparse.Namespace) -> int:
    """Issue a key and print it with its record; the key is not shown again."""
    with _user_errors(), _key_store(args, create=True) as store:
        _require_tenant(store.engine, args.tenant_id)
        expires_at = args.expires_at
        if args.expires_in_days is not None:
            expires_at = datetime.now(UTC) + timedelta(days=args.expires_in_days)
        with storage_errors("API key store"), Session(store.engine) as session:
            issued = store.issue(
                args.tenant_id,
                name=args.name,
                scopes=args.scopes,
                expires_at=expires_at,
                rate_limit=args.rate_limit,
                token_limit=args.token_limit,
                project_id=args.project_id,
                environment=args.environment,
                session=session,
            )
            print("store this key now: it cannot be shown again", file=sys.stderr)
            _print({"key": issued.key, **api_key_to_dict(issued.record)})
            sys.stdout.flush()
            # Commit once the key is out: a key nobody saw (| head, a full disk) is not kept.
            session.commit()
        return 0
    return 1


def api_keys_list(args: argparse.Namespace) -> int:
    """Print one page of a tenant's keys."""
    with _user_errors(), _key_store(args) as store:
        _require_tenant(store.engine, args.tenant_id)
        page = store.list(args.tenant_id, limit=args.limit, cursor=args.cursor)
        return _print(
            {"items": [api_key_to_dict(k) for k in page.items], "next_cursor": page.next_cursor}
        )
    return 1


def api_keys_revoke(args: argparse.Namespace) -> int:
    """Revoke a tenant's key and print its record."""
    with _user_errors(), _key_store(args) as store:
        return _print(api_key_to_dict(store.revoke(args.tenant_id, args.key_id)))
    return 1


# -- plumbing -----------------------------------------------------------------


@contextmanager
def _user_errors() -> Iterator[None]:
    """Turn tenantkit errors into one line on stderr; the handler then returns 1."""
    try:
        yield
    except StorageError as exc:
        cause = str(exc.__cause__).splitlines()[0] if exc.__cause__ else ""
        print(f"error: {exc}" + (f" ({cause})" if cause else ""), file=sys.stderr)
    except ValidationError as exc:
        where = f" [{exc.field}]" if exc.field else ""
        print(f"error: {exc}{where}", file=sys.stderr)
    except TenantKitError as exc:
        print(f"error: {exc}", file=sys.stderr)


@contextmanager
def _tenant_store(args: argparse.Namespace, *, create: bool = False) -> Iterator[TenantStore]:
    """The tenant store; only ``create`` makes its table (a read of the wrong database must not)."""
    settings = Settings.from_env()
    engine = _engine(args, settings)
    try:
        store = TenantStore(engine, cache=settings.cache)
        if create:
            store.create_all()
        else:
            _require_table(engine, TenantRow.__tablename__)
        yield store
    finally:
        engine.dispose()


@contextmanager
def _key_store(args: argparse.Namespace, *, create: bool = False) -> Iterator[APIKeyStore]:
    settings = Settings.from_env()
    engine = _engine(args, settings)
    try:
        store = APIKeyStore(
            engine,
            secret=settings.api_key_secret,
            cache=settings.cache,
            environment=settings.api_key_environment,
            touch_interval_seconds=0,
        )
        _require_table(engine, TenantRow.__tablename__)
        if create:
            store.create_all()
        else:
            _require_table(engine, APIKeyRow.__tablename__)
        yield store
    finally:
        engine.dispose()


def _require_table(engine: Engine, table: str) -> None:
    with storage_errors("tenant store"):
        present = inspect(engine).has_table(table)
    if not present:
        raise ConfigurationError(
            f"this database has no {table} table: check --database-url "
            "(a first 'tenantkit tenants create' makes the tables)"
        )


def _require_tenant(engine: Engine, tenant_id: str) -> None:
    """Raise ``TenantNotFound`` for an unknown tenant: a mistyped id must not get a key."""
    TenantStore(engine).get(tenant_id)


def _engine(args: argparse.Namespace, settings: Settings) -> Engine:
    url = args.database_url or settings.database_url
    try:
        return make_engine(url)
    except (SQLAlchemyError, ImportError) as exc:
        raise ConfigurationError(f"cannot use database URL {url!r}: {exc}") from exc


def _print(document: object) -> int:
    print(json.dumps(document, indent=2))
    return 0


def _optional_int(value: str) -> int | None:
    if value.strip().lower() in ("none", "null", ""):
        return None
    try:
        return int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer or 'none': {value!r}") from None


def _positive_int(value: str) -> int:
    try:
        number = int(value)
    except ValueError:
        number = 0
    if number < 1:
        raise argparse.ArgumentTypeError(f"not a positive integer: {value!r}")
    return number


def _allow_list(value: str) -> list[str] | None:
    if value.strip() == UNRESTRICTED:
        return None
    return [item.strip() for item in value.split(",") if item.strip()]


def _json_object(value: str) -> dict[str, Any]:
    try:
        data = json.loads(value)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise argparse.ArgumentTypeError("must be a JSON object")
    return data


def _datetime(value: str) -> datetime:
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an RFC 3339 time: {value!r}") from None
    if parsed.tzinfo is None:
        raise argparse.ArgumentTypeError("give a timezone, e.g. 2030-01-01T00:00Z")
    return parsed
