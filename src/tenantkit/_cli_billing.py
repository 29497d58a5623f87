"""CLI commands ``billing sync`` and ``usage report``; ``tenantkit.cli`` calls ``register``.

The database comes from ``--database-url`` or ``TENANTKIT_DATABASE_URL``; the
Stripe key from ``STRIPE_API_KEY``; plans from ``TENANTKIT_PLANS``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import TextIO

from sqlalchemy import Table
from sqlalchemy.orm import Session, sessionmaker

from ._billing_meter import MeterSync, SyncProgress
from ._db import Base, make_engine
from .billing import make_client
from .errors import HTTPError, TenantKitError
from .plans import Plans
from .settings import Settings
from .usage import UsageRecorder

BAR_WIDTH = 30
SYNC_FAILED_EVENTS = 3
"""``billing sync``'s exit status when some events failed (1 is an error, 2 a usage error)."""


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the ``billing`` and ``usage`` commands to the tenantkit CLI."""
    billing = sub.add_parser("billing", help="Stripe billing")
    billing_sub = billing.add_subparsers(dest="billing_command", required=True)
    sync = billing_sub.add_parser("sync", help="push pending usage events to Stripe meters")
    _database_option(sync)
    sync.add_argument("--stripe-api-key", default=None, help="default: $STRIPE_API_KEY")
    sync.add_argument(
        "--stripe-api-base", default=None, help="another Stripe API address (tests, proxies)"
    )
    sync.add_argument("--batch-size", type=_positive, default=100)
    sync.add_argument("--limit", type=_positive, default=None, help="stop after N events")
    sync.add_argument(
        "--meter",
        action="append",
        default=None,
        metavar="TYPE=EVENT_NAME",
        help="usage type to Stripe meter event name (repeatable; default api_calls=api_calls)",
    )
    sync.add_argument("--no-progress", action="store_true", help="do not draw the progress bar")
    sync.set_defaults(func=billing_sync)

    usage = sub.add_parser("usage", help="usage metering")
    usage_sub = usage.add_subparsers(dest="usage_command", required=True)
    report = usage_sub.add_parser("report", help="a tenant's usage in one billing cycle")
    _database_option(report)
    report.add_argument("--tenant", required=True)
    report.add_argument("--cycle", default=None, help="YYYY-MM (default: this month)")
    report.add_argument("--plan", required=True, help="the tenant's plan (free, starter, ...)")
    report.add_argument("--json", action="store_true", help="print the report as JSON")
    report.set_defaults(func=usage_report)


def billing_sync(
    args: argparse.Namespace, *, out: TextIO | None = None, err: TextIO | None = None
) -> int:
    """Run ``billing sync``: send due events to Stripe, drawing a progress bar on stderr."""
    out, err = out or sys.stdout, err or sys.stderr
    try:
        key = args.stripe_api_key or os.environ.get("STRIPE_API_KEY", "")
        client = make_client(key, api_base=args.stripe_api_base, max_network_retries=1)
        meters = _meters(args.meter)
        draw = None if args.no_progress else _bar(err)
        with _sessions(args) as sessions:
            syncer = MeterSync(client, sessions, event_names=meters, batch_size=args.batch_size)
            result = syncer.sync(limit=args.limit, progress=draw)
    except TenantKitError as exc:
        print(f"\nerror: {_message(exc)}", file=err)
        return 1
    if draw is not None:
        print(file=err)
    print(
        f"sent {result.sent} (already in Stripe {result.duplicates}), failed {result.failed}, "
        f"skipped {result.skipped}, retrying later {result.retrying}, "
        f"still due {result.remaining}",
        file=out,
    )
    # 3, not 2: argparse exits 2 on a usage error, and a cron job must tell the two apart.
    return 0 if result.failed == 0 else SYNC_FAILED_EVENTS


def usage_report(
    args: argparse.Namespace, *, out: TextIO | None = None, err: TextIO | None = None
) -> int:
    """Run ``usage report``: print a tenant's totals, limits, overage and amount."""
    out, err = out or sys.stdout, err or sys.stderr
    try:
        plans = Plans.from_env()
        with _sessions(args) as sessions:
            recorder = UsageRecorder(sessions, plans=plans)
            report = recorder.report(args.tenant, args.cycle, plan=args.plan)
    except (TenantKitError, ValueError) as exc:
        print(f"error: {_message(exc)}", file=err)
        return 1
    if args.json:
        print(json.dumps(report.to_dict(), indent=2), file=out)
        return 0
    print(f"{report.tenant_id}  {report.billing_cycle}  plan {report.plan}", file=out)
    for kind, total in report.totals.items():
        limit = report.limits.get(kind)
        shown = "unlimited" if limit is None else f"{limit:,}"
        suffix = "" if kind not in report.limits else f" / {shown}"
        print(f"  {kind:<20} {total:>12,}{suffix}", file=out)
    for kind, over in report.overage.items():
        print(
            f"  overage {kind:<12} {over:>12,}  {report.overage_amount} {report.currency}", file=out
        )
    amount = "negotiated" if report.amount is None else f"{report.amount} {report.currency}"
    print(f"  amount due {amount}", file=out)
    return 0


@contextmanager
def _sessions(args: argparse.Namespace) -> Iterator[Callable[[], Session]]:
    url = args.database_url or Settings.from_env().database_url
    engine = make_engine(url)
    try:
        Base.metadata.create_all(engine, tables=_our_tables())
        yield sessionmaker(engine, expire_on_commit=False)
    finally:
        engine.dispose()


def _our_tables() -> list[Table]:
    from . import billing, usage  # noqa: F401  (register the tables)

    names = (
        "tenantkit_usage_events",
        "tenantkit_usage_alerts",
        "tenantkit_billing_accounts",
        "tenantkit_stripe_webhook_events",
    )
    return [Base.metadata.tables[n] for n in names]


def _bar(stream: TextIO) -> Callable[[SyncProgress], None]:
    def draw(p: SyncProgress) -> None:
        filled = BAR_WIDTH if p.total == 0 else BAR_WIDTH * p.done // p.total
        bar = "#" * filled + "." * (BAR_WIDTH - filled)
        stream.write(
            f"\rsync [{bar}] {p.done}/{p.total}  sent {p.sent}  failed {p.failed}  "
            f"skipped {p.skipped}  retrying {p.retrying}"
        )
        stream.flush()

    return draw


def _meters(pairs: list[str] | None) -> Mapping[str, str]:
    if not pairs:
        return {"api_calls": "api_calls"}
    meters: dict[str, str] = {}
    for pair in pairs:
        kind, sep, name = pair.partition("=")
        if not sep or not kind or not name:
            raise TenantKitError(f"--meter takes TYPE=EVENT_NAME, got {pair!r}")
        meters[kind] = name
    return meters


def _database_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--database-url", default=None, help="default: $TENANTKIT_DATABASE_URL or the settings"
    )


def _positive(value: str) -> int:
    number = int(value)
    if number <= 0:
        raise argparse.ArgumentTypeError("must be a positive integer")
    return number


def _message(exc: Exception) -> str:
    return exc.detail if isinstance(exc, HTTPError) else str(exc)
