"""Recording rejected requests (quota exceeded, policy denied) without amplifying a flood.

A client hammering a spent quota would otherwise turn every 429 into a
database write. ``DenialRecorder`` writes the first denial of a kind per
tenant, actor and reason, then only counts repeats in memory for
``interval`` seconds; the next entry written for that key carries the count
as ``metadata["suppressed"]``.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from cachetools import LRUCache, TTLCache
from sqlalchemy.engine import Engine

from ._audit_model import AuditEntry
from .errors import HTTPError, PolicyDenied, QuotaExceeded, TenantSuspended
from .types import Identity, RequestInfo

log = logging.getLogger("tenantkit.audit")

ACTIONS: tuple[tuple[type[HTTPError], str], ...] = (
    (QuotaExceeded, "quota.exceeded"),
    (PolicyDenied, "policy.denied"),
    (TenantSuspended, "tenant.suspended_denied"),
)
# Problem fields worth keeping; the rest of a problem document is presentation.
KEPT_FIELDS = ("reason", "retry_after", "limit", "model", "tool", "upgrade_to")


class DenialRecorder:
    """Record rejected requests in the tenant's audit log, deduplicated per interval.

    Call it where the pipeline rejects an identified caller:
    ``recorder(identity, request, error)``. It never raises: a failure to
    record is logged, and the rejection goes out as it would have.
    """

    def __init__(
        self,
        bind: Engine,
        *,
        interval: float = 60.0,
        maxsize: int = 10_000,
        timer: Callable[[], float] = time.monotonic,
    ) -> None:
        from .audit import AuditLog

        self.log = AuditLog(bind)
        self._recent: TTLCache[tuple[str, ...], bool] = TTLCache(maxsize, interval, timer=timer)
        self._suppressed: LRUCache[tuple[str, ...], int] = LRUCache(maxsize)
        self._lock = threading.Lock()

    def __call__(
        self, identity: Identity, request: RequestInfo, error: HTTPError
    ) -> AuditEntry | None:
        """Record ``error`` for ``identity`` unless the same denial was recorded recently."""
        action = action_for(error)
        key = (identity.tenant_id, identity.actor, action, str(error.extra.get("reason", "")))
        with self._lock:
            if key in self._recent:
                self._suppressed[key] = self._suppressed.get(key, 0) + 1
                return None
            # Marked before writing: concurrent repeats count instead of writing too.
            self._recent[key] = True
            suppressed = self._suppressed.pop(key, 0)
        metadata: dict[str, Any] = {
            "status": error.status,
            "detail": error.detail,
            "method": request.method,
            "path": request.path,
        }
        metadata.update({k: error.extra[k] for k in KEPT_FIELDS if k in error.extra})
        if suppressed:
            metadata["suppressed"] = suppressed
        try:
            return self.log.record(
                action,
                tenant_id=identity.tenant_id,
                actor=identity.actor,
                metadata=metadata,
                request_id=request.request_id,
                client_ip=request.client,
                user_agent=request.header("user-agent"),
            )
        except Exception:  # never raises: a failed record must not turn the 4xx into a 500
            log.exception("could not record %s for tenant %s", action, identity.tenant_id)
            with self._lock:
                self._recent.pop(key, None)
                self._suppressed[key] = self._suppressed.get(key, 0) + suppressed
            return None


def action_for(error: HTTPError) -> str:
    """Return the audit action for a rejection (``quota.exceeded``, ``policy.denied`` ...)."""
    for kind, action in ACTIONS:
        if isinstance(error, kind):
            return action
    return f"request.denied.{error.slug}"
