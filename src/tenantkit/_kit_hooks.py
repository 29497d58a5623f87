"""What the kit calls out to: the rejection renderer, the call counter, the denial hook."""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from .errors import HTTPError
from .types import Decision, Identity, RequestInfo, TenantConfig

RejectHook = Callable[[RequestInfo, HTTPError], Decision]


class CallCounter(Protocol):
    """Counts admitted API calls per tenant without a write per request (usage metering).

    ``check`` raises ``QuotaExceeded`` when one more call would pass the
    tenant's hard monthly cap (``StorageError`` if it cannot tell);
    ``check_nowait`` does the same from memory only and returns ``False``,
    having checked nothing, when that needs a store read.
    ``tenantkit.usage.ApiCallCounter`` is one.
    """

    def add(self, tenant_id: str) -> None: ...

    def check(self, tenant: TenantConfig) -> None: ...

    def check_nowait(self, tenant: TenantConfig) -> bool: ...


class DenialHook(Protocol):
    """Told of each quota or policy rejection (``tenantkit.audit.DenialRecorder`` is one)."""

    def __call__(self, identity: Identity, request: RequestInfo, error: HTTPError) -> object: ...
