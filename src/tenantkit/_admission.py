"""What admission hands an adapter: the identified caller, then the admitted request."""

from __future__ import annotations

from dataclasses import dataclass, field

from ._quota_limits import LimitSet
from ._ratelimit_headers import RATELIMIT_POLICY
from .context import TenantContext
from .errors import HTTPError
from .quotas import Grant
from .types import Identity, TenantConfig

Caller = tuple[Identity, TenantConfig, LimitSet]
"""An identified caller (``TenantKit.identify``): who, its tenant and its request's limits.

A plain tuple: it is made once per request on the hot path.
"""


@dataclass(slots=True)
class Admission:
    """An admitted request: who, which tenant, what was reserved, and its context."""

    identity: Identity
    tenant: TenantConfig
    context: TenantContext
    grant: Grant | None = None
    headers: list[tuple[str, str]] = field(default_factory=list)
    #: The response status, set by the adapter when the response starts.
    status: int | None = None

    def released(self, failed: bool) -> bool:
        """Return whether ``finish`` refunds the reservation rather than settling it.

        So on a failure (the adapters count a response that never started or
        never finished as one), and on any response but a success (2xx), when
        the app reported no tokens: Flask turns a raising view into a 500
        response, which must not keep its estimate charged any more than on
        ASGI, and an app's own 4xx (its validation, an upstream's 429) or a
        redirect served no completion. A reported count was used whatever
        became of the response: it is settled (else a client could read a
        streamed completion and leave before its last chunk, for free).
        """
        if self.context.meter.used is not None:
            return False
        return failed or (self.status is not None and not 200 <= self.status < 300)


def limited(exc: HTTPError, identity: Identity, limits: LimitSet) -> None:
    """Mark a rejection of an identified caller: who, and the limits of its route.

    Every response of a limited route names its limits (``RateLimit-Policy``),
    a 403, a 413 or a 503 as well as a 429; the ``RateLimit`` state only comes
    with an admission or a 429, which read the buckets.
    """
    exc.identity = identity
    if limits:
        exc.headers.setdefault(RATELIMIT_POLICY, limits.policy_header)
