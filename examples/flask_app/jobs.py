"""Background jobs of the running server: audit retention and the Stripe meter sync.

One daemon thread; each job's failure is logged and retried on its next
turn, never fatal. ``python -m examples.flask_app`` starts it; tests call
the jobs directly.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from tenantkit import audit
from tenantkit.audit import PurgeResult

from .context import Platform

log = logging.getLogger("examples.flask_app.jobs")

AUDIT_PURGE_EVERY = 24 * 3600.0
METER_SYNC_EVERY = 60.0


def purge_audit(p: Platform) -> PurgeResult:
    """Delete audit entries older than ``AUDIT_RETENTION_DAYS`` (the chain stays verifiable)."""
    result = audit.purge(
        p.jobs_engine, now=p.clock.now(), default_days=p.config.audit_retention_days
    )
    if result.deleted:
        log.info("audit retention: deleted %d entries", result.deleted)
    return result


def sync_meters(p: Platform) -> None:
    """Send pending usage events to Stripe (retrying the ones that failed before)."""
    if p.billing is not None:
        p.billing.meters.sync()


def start_jobs(p: Platform) -> Callable[[], None]:
    """Run the jobs on their schedules in a daemon thread; return a function that stops it."""
    stop = threading.Event()
    schedule: list[tuple[float, Callable[[Platform], object]]] = [
        (AUDIT_PURGE_EVERY, purge_audit),
        (METER_SYNC_EVERY, sync_meters),
    ]
    due = [0.0 for _ in schedule]

    def run() -> None:
        elapsed = 0.0
        while not stop.is_set():
            for index, (every, job) in enumerate(schedule):
                if elapsed >= due[index]:
                    due[index] = elapsed + every
                    try:
                        job(p)
                    except Exception:
                        log.exception("background job %s failed", job.__name__)
            stop.wait(METER_SYNC_EVERY)
            elapsed += METER_SYNC_EVERY

    thread = threading.Thread(target=run, name="flask-app-jobs", daemon=True)
    thread.start()

    def stopper() -> None:
        stop.set()
        thread.join(10)

    return stopper
