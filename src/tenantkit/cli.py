"""The ``tenantkit`` command line (also ``python -m tenantkit``).

Each concern adds its own sub-commands through a ``register(sub)`` function
in its ``_cli_*`` module; this module only builds the parser and dispatches.
"""

from __future__ import annotations

import argparse
import os
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
    """Run the command line; return the exit code.

    1 for an error a user can fix, with one line on stderr; also 1 when the
    reader of stdout went away (``| head -1``) before the output was written.
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    func: Callable[[argparse.Namespace], int | None] = args.func
    try:
        return func(args) or 0
    except TenantKitError as exc:
        print(f"tenantkit: error: {exc}", file=sys.stderr)
        return 1
    except BrokenPipeError:
        _silence_stdout()
        print("tenantkit: error: output closed before it was all written", file=sys.stderr)
        return 1


def _silence_stdout() -> None:
    """Point stdout at /dev/null so the interpreter's last flush cannot fail again."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):  # no real file descriptor (an in-process capture)
        pass


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
