"""The ``tenantkit audit`` commands, run in-process through their argparse handlers."""

from __future__ import annotations

import argparse
import io
import json
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import update
from sqlalchemy.engine import Engine

from tenantkit import audit
from tenantkit._audit_model import LOG
from tenantkit._cli_audit import ProgressBar, register
from tenantkit._db import make_engine
from tenantkit.errors import StorageError
from test_audit_support import FakeClock, clock_fixture  # noqa: F401  (fixtures)


def run(*argv: str) -> int:
    parser = argparse.ArgumentParser(prog="tenantkit")
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(list(argv))
    return int(args.func(args))


@pytest.fixture
def db(tmp_path: Path) -> tuple[str, Engine]:
    """A SQLite file with the audit tables, by URL and engine."""
    url = f"sqlite:///{tmp_path}/cli.db"
    engine = make_engine(url)
    audit.create_tables(engine)
    return url, engine


def test_verify_without_an_audit_log_exits_2_naming_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A database with no audit tables: 2 and a clear line, never 1 (damaged) or 0 (intact)."""
    url = f"sqlite:///{tmp_path}/empty.db"
    make_engine(url).dispose()
    assert run("audit", "verify", "--tenant", "acme", "--database-url", url) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert "has no audit log" in captured.err and LOG.name in captured.err
    bad = f"sqlite:///{tmp_path}/missing-dir/x.db"
    assert run("audit", "verify", "--all", "--database-url", bad) == 2


def test_verify_prints_results_and_exits_by_outcome(
    db: tuple[str, Engine], capsys: pytest.CaptureFixture[str]
) -> None:
    """verify exits 0 on intact chains and 1, naming the problem, on a damaged one."""
    url, engine = db
    log = audit.AuditLog(engine)
    for tenant in ("acme", "beta"):
        log.record("user.login", tenant_id=tenant)
        log.record("user.logout", tenant_id=tenant)
    assert run("audit", "verify", "--tenant", "acme", "--database-url", url) == 0
    assert json.loads(capsys.readouterr().out)["ok"] is True
    with engine.begin() as conn:
        conn.execute(update(LOG).where(LOG.c.tenant_id == "beta").values(actor="forged"))
    assert run("audit", "verify", "--all", "--database-url", url) == 1
    captured = capsys.readouterr()
    results = [json.loads(line) for line in captured.out.splitlines()]
    assert [(r["tenant_id"], r["ok"]) for r in results] == [("acme", True), ("beta", False)]
    assert "beta: edited at seq 1" in captured.err


def test_purge_draws_a_progress_bar_and_reports(
    db: tuple[str, Engine], clock: FakeClock, capsys: pytest.CaptureFixture[str]
) -> None:
    """purge deletes past retention, draws its bar on stderr and prints the counts."""
    url, engine = db
    log = audit.AuditLog(engine)
    final = clock.now
    clock.now = final - timedelta(days=100)
    for _ in range(3):
        log.record("step", tenant_id="acme")
    clock.now = final
    log.record("step", tenant_id="acme")
    code = run("audit", "purge", "--database-url", url, "--progress", "--batch-size", "2")
    captured = capsys.readouterr()
    assert code == 0
    assert json.loads(captured.out) == {
        "deleted": 3,
        "per_tenant": {"acme": 3},
        "checkpoints": {"acme": 3},
    }
    assert "audit purge [" in captured.err and "3/3" in captured.err
    assert audit.verify(engine, "acme").ok


def test_purge_honours_per_tenant_days_and_env_default(
    db: tuple[str, Engine],
    clock: FakeClock,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """TENANTKIT_AUDIT_RETENTION_DAYS sets the default; --tenant-days overrides one tenant."""
    url, engine = db
    log = audit.AuditLog(engine)
    final = clock.now
    clock.now = final - timedelta(days=20)
    log.record("step", tenant_id="acme")
    log.record("step", tenant_id="beta")
    clock.now = final
    monkeypatch.setenv("TENANTKIT_AUDIT_RETENTION_DAYS", "30")
    code = run("audit", "purge", "--database-url", url, "--tenant-days", "beta=10", "--no-progress")
    assert code == 0
    assert json.loads(capsys.readouterr().out)["per_tenant"] == {"beta": 1}


def test_export_writes_json_lines(
    db: tuple[str, Engine], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """export writes one JSON entry per line to stdout or a file, filters applied."""
    url, engine = db
    log = audit.AuditLog(engine)
    log.record("user.login", tenant_id="acme")
    log.record("api_key.created", tenant_id="acme", resource_type="api_key", resource_id="k1")
    log.record("user.login", tenant_id="beta")
    assert run("audit", "export", "--tenant", "acme", "--database-url", url) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [json.loads(line)["action"] for line in lines] == ["user.login", "api_key.created"]
    out = tmp_path / "acme.jsonl"
    args = ("--tenant", "acme", "--action", "api_key.*", "-o", str(out), "--database-url", url)
    assert run("audit", "export", *args) == 0
    assert [json.loads(line)["resource_id"] for line in out.read_text().splitlines()] == ["k1"]


def test_user_errors_are_one_line_and_exit_1(
    db: tuple[str, Engine], capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """A malformed tenant, an unusable URL or an unwritable file give one line, and exit 1
    (verify: 2, could not verify, as its 1 says a chain is damaged)."""
    url, _ = db
    assert run("audit", "verify", "--tenant", "Bad Tenant", "--database-url", url) == 2
    assert capsys.readouterr().err.startswith("error: tenant_id must match")
    assert run("audit", "verify", "--all", "--database-url", "nosuchdb://x") == 2
    assert "cannot use database URL" in capsys.readouterr().err
    missing = str(tmp_path / "no" / "dir" / "x.jsonl")
    assert run("audit", "export", "--tenant", "acme", "-o", missing, "--database-url", url) == 1
    assert "cannot write" in capsys.readouterr().err
    assert run("audit", "protect", "--app-role", "app", "--database-url", url) == 1
    assert "PostgreSQL" in capsys.readouterr().err


def test_bad_arguments_are_refused_by_the_parser(capsys: pytest.CaptureFixture[str]) -> None:
    """Malformed --days, --tenant-days or --start stop at argument parsing."""
    for argv in (
        ("audit", "purge", "--days", "0"),
        ("audit", "purge", "--tenant-days", "acme"),
        ("audit", "export", "--tenant", "acme", "--start", "yesterday"),
        ("audit", "verify"),
    ):
        with pytest.raises(SystemExit) as caught:
            run(*argv)
        assert caught.value.code == 2
    capsys.readouterr()


def test_progress_bar_renders_in_place() -> None:
    """The bar redraws on one line and ends it on close."""
    out = io.StringIO()
    bar = ProgressBar(out, label="purge", width=10)
    bar(0, 4)
    bar(2, 4)
    bar(4, 4)
    bar.close()
    text = out.getvalue()
    assert text.count("\r") == 3 and text.endswith("\n")
    assert "[#####-----]  50% 2/4" in text and "[##########] 100% 4/4" in text


def test_failed_export_leaves_the_output_file_as_it_was(
    db: tuple[str, Engine],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Bad filters, a database without the log or a failure mid-stream: exit 1, one line,
    and ``-o`` neither truncates the previous export nor leaves half a new one behind."""
    url, engine = db
    audit.AuditLog(engine).record("user.login", tenant_id="acme")
    out = tmp_path / "acme.jsonl"
    out.write_text("previous export\n")
    bare = f"sqlite:///{tmp_path}/bare.db"
    make_engine(bare).dispose()
    for argv in (
        ("--start", "2024-02-01", "--end", "2024-01-01", "--database-url", url),
        ("--tenant", "Bad Tenant", "--database-url", url),
        ("--database-url", bare),
    ):
        assert run("audit", "export", "--tenant", "acme", "-o", str(out), *argv) == 1
        err = capsys.readouterr().err
        assert err.startswith("error: ") and err.count("\n") == 1
        assert out.read_text() == "previous export\n"

    def broken(*args: object, **kwargs: object) -> Iterator[str]:
        yield '{"seq": 1}\n'
        raise StorageError("the database went away")

    monkeypatch.setattr(audit, "export_jsonl", broken)
    assert run("audit", "export", "--tenant", "acme", "-o", str(out), "--database-url", url) == 1
    assert "went away" in capsys.readouterr().err
    assert out.read_text() == "previous export\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["acme.jsonl", "bare.db", "cli.db"]
