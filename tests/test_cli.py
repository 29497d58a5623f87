"""The tenantkit command line: one parser, every concern's commands, clean errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from typing import Any

import pytest

from tenantkit import audit
from tenantkit._db import make_engine
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


def _run_into_closed_pipe(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    read_end, write_end = os.pipe()
    os.close(read_end)  # the reader (``| head -1``) has already gone
    try:
        return subprocess.run(
            [sys.executable, "-m", "tenantkit", *args],
            stdout=write_end,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
            timeout=60,
            check=False,
        )
    finally:
        os.close(write_end)


def test_output_to_a_closed_pipe_is_one_line_not_a_traceback(tmp_path: Any) -> None:
    """`tenantkit tenants list | head -1` with the reader gone: one line on stderr, exit 1."""
    db = ["--database-url", f"sqlite:///{tmp_path / 'pipe.db'}"]
    assert main(["tenants", "create", "acme", *db]) == 0
    done = _run_into_closed_pipe(["tenants", "list", *db], dict(os.environ))
    assert "Traceback" not in done.stderr
    assert done.stderr.strip().count("\n") == 0
    assert "output" in done.stderr
    assert done.returncode == 1


def test_audit_export_to_a_closed_pipe_exits_1_like_every_command(tmp_path: Any) -> None:
    """audit export whose reader has gone follows the same rule: one line, exit 1."""
    url = f"sqlite:///{tmp_path / 'pipe-audit.db'}"
    engine = make_engine(url)
    audit.create_tables(engine)
    audit.AuditLog(engine).record("user.login", tenant_id="acme")
    engine.dispose()
    done = _run_into_closed_pipe(
        ["audit", "export", "--tenant", "acme", "--database-url", url], dict(os.environ)
    )
    assert "Traceback" not in done.stderr
    assert "output closed" in done.stderr
    assert done.returncode == 1


KEY_SECRET = "cli-test-secret-" + "k" * 32


def test_api_keys_issue_for_an_unknown_tenant_fails(
    tmp_path: Any, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """api-keys issue/list for a tenant that does not exist (a typo): exit 1, no key made."""
    monkeypatch.setenv("TENANTKIT_API_KEY_SECRET", KEY_SECRET)
    db = ["--database-url", f"sqlite:///{tmp_path / 'keys.db'}"]
    assert main(["tenants", "create", "acme", *db]) == 0
    capsys.readouterr()
    assert main(["api-keys", "issue", "acmee", "--name", "ci", *db]) == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    assert "acmee" in captured.err and "not found" in captured.err
    assert main(["api-keys", "list", "acmee", *db]) == 1
    assert "not found" in capsys.readouterr().err
    # Creating the tenant later does not bring a forgotten key to life.
    assert main(["tenants", "create", "acmee", *db]) == 0
    capsys.readouterr()
    assert main(["api-keys", "list", "acmee", *db]) == 0
    assert json.loads(capsys.readouterr().out)["items"] == []


def test_api_key_whose_secret_could_not_be_printed_is_not_kept(
    tmp_path: Any, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """api-keys issue into a closed pipe: the key nobody saw is not left valid in the store."""
    monkeypatch.setenv("TENANTKIT_API_KEY_SECRET", KEY_SECRET)
    db = ["--database-url", f"sqlite:///{tmp_path / 'lost.db'}"]
    assert main(["tenants", "create", "acme", *db]) == 0
    capsys.readouterr()
    env = {**os.environ, "TENANTKIT_API_KEY_SECRET": KEY_SECRET}
    done = _run_into_closed_pipe(["api-keys", "issue", "acme", "--name", "ci", *db], env)
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert main(["api-keys", "list", "acme", *db]) == 0
    assert json.loads(capsys.readouterr().out)["items"] == []
