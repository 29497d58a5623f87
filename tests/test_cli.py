"""The tenantkit command line: one parser, every concern's commands, clean errors."""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any

import pytest

from tenantkit.cli import build_parser, main


def test_every_concern_registers_commands() -> None:
    """tenants, api-keys, db, audit, billing and usage commands are all registered."""
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    assert {"tenants", "api-keys", "db", "audit", "billing", "usage"} <= set(sub.choices)  # type: ignore[arg-type]


def test_tenant_lifecycle_through_main(tmp_path: Any, capsys: pytest.CaptureFixture[str]) -> None:
    """create, suspend, list and delete a tenant through main(); bad ids fail with exit 1."""
    db = ["--database-url", f"sqlite:///{tmp_path / 'cli.db'}"]
    assert main(["tenants", "create", "acme", "--name", "Acme", *db]) == 0
    created = json.loads(capsys.readouterr().out)
    assert created["id"] == "acme"
    assert main(["tenants", "suspend", "acme", *db]) == 0
    capsys.readouterr()
    assert main(["tenants", "list", *db]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert [t["status"] for t in listed["items"]] == ["suspended"]
    assert main(["tenants", "create", "../etc", *db]) == 1
    assert "must match" in capsys.readouterr().err
    assert main(["tenants", "delete", "acme", *db]) == 0


def test_python_dash_m() -> None:
    """python -m tenantkit runs the same command line."""
    out = subprocess.run(
        [sys.executable, "-m", "tenantkit", "--version"], capture_output=True, text=True, check=True
    )
    assert out.stdout.startswith("tenantkit ")
