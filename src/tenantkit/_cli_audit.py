"""The ``audit`` CLI commands: verify, purge (with a progress bar), export, protect.

Handlers take the parsed arguments and return the exit code: 0 on success;
1 when ``verify`` finds damage or for an error a user can fix (one line on
stderr). JSON results go to stdout, the progress bar to stderr.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from collections.abc import Iterable, Iterator
from contextlib import contextmanager, suppress
from datetime import UTC, datetime
from typing import IO, Any

from sqlalchemy import inspect, select
from sqlalchemy.engine import Engine
from sqlalchemy.exc import SQLAlchemyError

from . import audit
from ._audit_model import LOG
from ._audit_retention import DEFAULT_RETENTION_DAYS
from ._db import make_engine
from .errors import ConfigurationError, StorageError, TenantKitError, ValidationError
from .settings import Settings

RETENTION_ENV = "TENANTKIT_AUDIT_RETENTION_DAYS"


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the ``audit`` command group (verify, purge, export, protect) to ``sub``."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--database-url",
        help="SQLAlchemy URL of the audit database (default: TENANTKIT_DATABASE_URL)",
    )
    group = sub.add_parser("audit", help="verify, purge and export the audit trail")
    commands = group.add_subparsers(dest="audit_command", metavar="COMMAND", required=True)

    p = commands.add_parser("verify", parents=[common], help="check tenants' hash chains")
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("--tenant", action="append", dest="tenants", help="repeatable")
    which.add_argument("--all", action="store_true", help="every tenant with entries")
    p.set_defaults(func=audit_verify)

    p = commands.add_parser("purge", parents=[common], help="delete entries past retention")
    p.add_argument(
        "--days",
        type=_positive_int,
        help=f"retention in days (default: {RETENTION_ENV} or {DEFAULT_RETENTION_DAYS})",
    )
    p.add_argument(
        "--tenant-days",
        action="append",
        type=_tenant_days,
        default=[],
        metavar="TENANT=DAYS",
        help="a tenant's own retention (repeatable)",
    )
    p.add_argument("--batch-size", type=_positive_int, default=1000)
    p.add_argument(
        "--progress",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="draw a progress bar on stderr (default: when stderr is a terminal)",
    )
    p.set_defaults(func=audit_purge)

    p = commands.add_parser("export", parents=[common], help="write a tenant's entries")
    p.add_argument("--tenant", required=True)
    p.add_argument("--format", choices=["jsonl"], default="jsonl")
    p.add_argument("--output", "-o", help="file to write (default: stdout)")
    p.add_argument("--actor")
    p.add_argument("--action", help="exact, or a prefix ending in *")
    p.add_argument("--resource-type")
    p.add_argument("--resource-id")
    p.add_argument("--start", type=_timestamp, help="RFC 3339 or YYYY-MM-DD (UTC), inclusive")
    p.add_argument("--end", type=_timestamp, help="RFC 3339 or YYYY-MM-DD (UTC), exclusive")
    p.set_defaults(func=audit_export)

    p = commands.add_parser(
        "protect", parents=[common], help="PostgreSQL: make the log append-only for a role"
    )
    p.add_argument("--app-role", required=True, help="the application's database role")
    p.set_defaults(func=audit_protect)


def audit_verify(args: argparse.Namespace) -> int:
    """Verify the named tenants' chains; print one JSON line each.

    Exits 0 when every chain is intact, 1 if any is damaged, 2 when it could not
    verify (no audit log in the database, a database error): a scheduled check
    must not read "could not look" as "tampered with", nor as "intact".
    """
    with _user_errors(), _engine(args) as engine:
        if not inspect(engine).has_table(LOG.name):
            raise StorageError(
                f"this database has no audit log (no table {LOG.name}): nothing to verify; "
                "is --database-url (TENANTKIT_DATABASE_URL) the application's database?"
            )
        tenants = args.tenants or _tenants(engine)
        damaged = 0
        for tenant_id in tenants:
            result = audit.verify(engine, tenant_id)
            print(json.dumps(_verify_dict(result)))
            if not result.ok:
                damaged += 1
                print(
                    f"{tenant_id}: {result.problem} at seq {result.seq}: {result.detail}",
                    file=sys.stderr,
                )
        return 1 if damaged else 0
    return 2


def audit_purge(args: argparse.Namespace) -> int:
    """Purge entries past retention, drawing a progress bar; print the result as JSON."""
    with _user_errors(), _engine(args) as engine:
        days = args.days or _env_days()
        show = sys.stderr.isatty() if args.progress is None else args.progress
        bar = ProgressBar(sys.stderr, label="audit purge") if show else None
        result = audit.purge(
            engine,
            default_days=days,
            per_tenant=dict(args.tenant_days),
            progress=bar,
            batch_size=args.batch_size,
        )
        if bar is not None:
            bar.close()
        print(
            json.dumps(
                {
                    "deleted": result.deleted,
                    "per_tenant": dict(result.per_tenant),
                    "checkpoints": dict(result.checkpoints),
                }
            )
        )
        return 0
    return 1


def audit_export(args: argparse.Namespace) -> int:
    """Write a tenant's entries as JSON Lines, oldest first."""
    with _user_errors(), _engine(args) as engine:
        lines = audit.export_jsonl(
            engine,
            args.tenant,
            actor=args.actor,
            action=args.action,
            resource_type=args.resource_type,
            resource_id=args.resource_id,
            start=args.start,
            end=args.end,
        )
        if args.output is None:
            # A reader gone early (``| head``) raises BrokenPipeError: main() reports it.
            sys.stdout.writelines(lines)
            sys.stdout.flush()
            return 0
        _write_whole(args.output, lines)
        return 0
    return 1


def audit_protect(args: argparse.Namespace) -> int:
    """Install the append-only triggers and privileges for the application role."""
    with _user_errors(), _engine(args) as engine:
        audit.create_tables(engine)
        audit.protect(engine, args.app_role)
        print(json.dumps({"protected": True, "app_role": args.app_role}))
        return 0
    return 1


class ProgressBar:
    """A plain text progress bar redrawn in place: ``label [#####-----] 50% 5/10``."""

    def __init__(self, stream: IO[str], *, label: str, width: int = 30) -> None:
        self.stream = stream
        self.label = label
        self.width = width
        self.drawn = False

    def __call__(self, done: int, total: int) -> None:
        fraction = 1.0 if total == 0 else min(done / total, 1.0)
        filled = int(self.width * fraction)
        bar = "#" * filled + "-" * (self.width - filled)
        self.stream.write(f"\r{self.label} [{bar}] {fraction:4.0%} {done}/{total}")
        self.stream.flush()
        self.drawn = True

    def close(self) -> None:
        """End the bar's line."""
        if self.drawn:
            self.stream.write("\n")
            self.stream.flush()


def _verify_dict(result: audit.VerifyResult) -> dict[str, Any]:
    return {
        "tenant_id": result.tenant_id,
        "ok": result.ok,
        "checked": result.checked,
        "start_seq": result.start_seq,
        "last_seq": result.last_seq,
        "last_hash": result.last_hash,
        "problem": result.problem,
        "seq": result.seq,
        "detail": result.detail,
    }


def _tenants(engine: Engine) -> list[str]:
    try:
        with engine.connect() as conn:
            found = conn.execute(select(LOG.c.tenant_id).distinct().order_by(LOG.c.tenant_id))
            return list(found.scalars())
    except SQLAlchemyError as exc:
        raise StorageError("could not list the audit log's tenants") from exc


def _env_days() -> int:
    raw = os.environ.get(RETENTION_ENV)
    if not raw:
        return DEFAULT_RETENTION_DAYS
    try:
        return _positive_int(raw)
    except argparse.ArgumentTypeError as exc:
        raise ConfigurationError(f"{RETENTION_ENV}: {exc}") from exc


def _positive_int(raw: str) -> int:
    try:
        value = int(raw)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {raw!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value


def _tenant_days(raw: str) -> tuple[str, int]:
    tenant, sep, days = raw.partition("=")
    if not sep or not tenant:
        raise argparse.ArgumentTypeError(f"expected TENANT=DAYS, got {raw!r}")
    return tenant, _positive_int(days)


def _timestamp(raw: str) -> datetime:
    try:
        value = datetime.fromisoformat(raw)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an RFC 3339 time or date: {raw!r}") from None
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


def _write_whole(path: str, lines: Iterable[str]) -> None:
    """Write ``lines`` to ``path`` all or nothing: a bad filter, a database error or a
    failure mid-way leaves a previous file there untouched and no partial one.

    A regular file is written beside itself and renamed into place; anything else
    (a pipe, ``/dev/stdout``) is written directly.
    """
    try:
        if os.path.exists(path) and not os.path.isfile(path):
            with open(path, "w", encoding="utf-8") as out:
                out.writelines(lines)
            return
        folder, name = os.path.split(os.path.abspath(path))
        fd, temp = tempfile.mkstemp(dir=folder, prefix=f".{name}.", suffix=".partial")
    except OSError as exc:
        raise ConfigurationError(f"cannot write {path}: {exc.strerror}") from exc
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            out.writelines(lines)
        os.chmod(temp, _mode_for(path))
        os.replace(temp, path)
    except OSError as exc:
        with suppress(OSError):
            os.unlink(temp)
        raise ConfigurationError(f"cannot write {path}: {exc.strerror}") from exc
    except BaseException:
        with suppress(OSError):
            os.unlink(temp)
        raise


def _mode_for(path: str) -> int:
    """The mode ``open(path, "w")`` would leave: the file's own, else 0o666 less the umask."""
    if os.path.exists(path):
        return os.stat(path).st_mode & 0o7777
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


@contextmanager
def _engine(args: argparse.Namespace) -> Iterator[Engine]:
    url = getattr(args, "database_url", None) or Settings.from_env().database_url
    try:
        engine = make_engine(url)
    except (SQLAlchemyError, ImportError) as exc:
        raise ConfigurationError(f"cannot use database URL {url!r}: {exc}") from exc
    try:
        yield engine
    finally:
        engine.dispose()


@contextmanager
def _user_errors() -> Iterator[None]:
    """Turn tenantkit and database errors into one line on stderr; the handler returns 1."""
    try:
        yield
    except ValidationError as exc:
        where = f" [{exc.field}]" if exc.field else ""
        print(f"error: {exc}{where}", file=sys.stderr)
    except TenantKitError as exc:
        print(f"error: {exc}", file=sys.stderr)
    except SQLAlchemyError as exc:
        first = str(exc).splitlines()[0]
        print(f"error: the database refused the operation: {first}", file=sys.stderr)
