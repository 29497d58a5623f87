"""The ``tenantkit`` command line (also ``python -m tenantkit``).

Each concern adds its own sub-commands through a ``register(sub)`` function
in its ``_cli_*`` module; this module only builds the parser and dispatches.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from importlib.metadata import version

from . import _cli_audit, _cli_billing, _cli_db, _cli_tenants
from .errors import TenantKitError

Registrar = Callable[["argparse._SubParsersAction[argparse.ArgumentParser]"], None]

COMMANDS: tuple[Registrar, ...] = (
    _cli_tenants.register,
    _cli_db.register,
    _cli_audit.register,
    _cli_billing.register,
)


def build_parser() -> argparse.ArgumentParser:
    """Return the parser with every registered sub-command."""
    parser = argparse.ArgumentParser(
        prog="tenantkit", description="Manage tenantkit tenants, keys, data and billing."
    )
    parser.add_argument("--version", action="version", version=f"tenantkit {version('tenantkit')}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for register in COMMANDS:
        register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; return the exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    func: Callable[[argparse.Namespace], int | None] = args.func
    try:
        return func(args) or 0
    except TenantKitError as exc:
        print(f"tenantkit: error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
