"""The ``db`` CLI commands: ``db doctor`` and ``db apply-rls``.

Both import the application's metadata from ``--metadata module:attr`` (a
``MetaData``, or anything with a ``.metadata`` such as a declarative base)
and connect to ``--database-url`` or ``TENANTKIT_DATABASE_URL``. Exit codes:
0 clean or done, 1 problems found, 2 bad arguments or an unreachable database.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from typing import Any

from sqlalchemy import MetaData, create_engine
from sqlalchemy.exc import ArgumentError, SQLAlchemyError

from .doctor import doctor
from .errors import ConfigurationError
from .rls import apply_rls, rls_ddl

DATABASE_URL_ENV = "TENANTKIT_DATABASE_URL"


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the ``db`` command group (``doctor``, ``apply-rls``) to ``sub``."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--metadata",
        required=True,
        help="the app's tables as module:attr (a MetaData or a declarative Base)",
    )
    common.add_argument("--database-url", help=f"SQLAlchemy URL (default: ${DATABASE_URL_ENV})")
    group = sub.add_parser("db", help="row-level security for tenant-scoped tables")
    commands = group.add_subparsers(dest="db_command", metavar="COMMAND", required=True)

    p = commands.add_parser(
        "doctor",
        parents=[common],
        help="name every tenant-isolation problem (exit 1 if any); connect as the app's role",
    )
    p.set_defaults(func=db_doctor)

    p = commands.add_parser(
        "apply-rls",
        parents=[common],
        help="enable and force RLS with the tenant policy on every scoped table (as owner)",
    )
    p.add_argument("--app-role", help="also grant this application role what it needs")
    p.add_argument("--dry-run", action="store_true", help="print the SQL, run nothing")
    p.set_defaults(func=db_apply_rls)


def db_doctor(args: argparse.Namespace) -> int:
    """Print each problem ``doctor`` finds; return 1 if any, 0 if clean."""
    try:
        metadata = load_metadata(args.metadata)
        engine = create_engine(_database_url(args))
        try:
            problems = doctor(engine, metadata)
        finally:
            engine.dispose()
    except (ConfigurationError, ArgumentError, SQLAlchemyError) as exc:
        return _fail(exc)
    for problem in problems:
        print(f"{problem.code}\t{problem.object}\t{problem.message}")
    if problems:
        print(f"{len(problems)} problem(s) found", file=sys.stderr)
        return 1
    print("clean: row-level security isolates every scoped table")
    return 0


def db_apply_rls(args: argparse.Namespace) -> int:
    """Run (or print with ``--dry-run``) the row-level security DDL; return 0 when done."""
    try:
        metadata = load_metadata(args.metadata)
        if args.dry_run:
            for statement in rls_ddl(metadata, app_role=args.app_role):
                print(statement + ";")
            return 0
        engine = create_engine(_database_url(args))
        try:
            ran = apply_rls(engine, metadata, app_role=args.app_role)
        finally:
            engine.dispose()
    except (ConfigurationError, ArgumentError, SQLAlchemyError) as exc:
        return _fail(exc)
    print(f"applied {len(ran)} statement(s)")
    return 0


def load_metadata(spec: str) -> MetaData:
    """Import ``module:attr`` and return its ``MetaData`` (or its ``.metadata``)."""
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise ConfigurationError(f"--metadata must look like module:attr, got {spec!r}")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ConfigurationError(f"cannot import {module_name!r}: {exc}") from exc
    found: Any = module
    for part in attr.split("."):
        if not hasattr(found, part):
            raise ConfigurationError(f"{module_name!r} has no attribute {attr!r}")
        found = getattr(found, part)
    metadata = found if isinstance(found, MetaData) else getattr(found, "metadata", None)
    if not isinstance(metadata, MetaData):
        raise ConfigurationError(f"{spec} is neither a MetaData nor has a .metadata")
    return metadata


def _database_url(args: argparse.Namespace) -> str:
    url = args.database_url or os.environ.get(DATABASE_URL_ENV)
    if not url:
        raise ConfigurationError(f"pass --database-url or set {DATABASE_URL_ENV}")
    return str(url)


def _fail(exc: Exception) -> int:
    message = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    print(f"error: {message}", file=sys.stderr)
    return 2
