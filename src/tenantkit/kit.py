"""The ``TenantKit`` facade: one framework-neutral request pipeline for every adapter.

resolve identity → load tenant → (read the body) → policy → quotas → (app) → settle tokens.
Adapters translate a request into a ``RequestInfo`` and call ``admit`` (or
``admit_async``); where the pipeline reads the body they call ``identify`` first,
so that a caller rejected for who it is never uploads one, then pass the body and
the caller to ``admit``. They bind the returned context, run the app and call
``finish``. A rejection is an ``HTTPError`` turned into a ``Decision`` by ``on_reject``.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from contextvars import ContextVar
from typing import Any

import anyio.to_thread
from sqlalchemy import text
from sqlalchemy.engine import Engine

from . import apikeys, tenants
from ._admission import Admission, Caller, limited
from ._db import make_engine
from ._kit_hooks import CallCounter, DenialHook, RejectHook
from ._quota_limits import limit_set_for
from ._request import decode_body, parse_json_object, path_matches, problem_decision
from .apikeys import APIKeyStore
from .context import TenantContext, TokenMeter
from .errors import (
    ConfigurationError,
    HTTPError,
    PolicyDenied,
    QuotaExceeded,
    ServiceUnavailable,
    StorageError,
    TenantNotFound,
    TenantSuspended,
    Unauthorized,
)
from .identity import IdentityChain, build_chain
from .policy import Policy, estimate_tokens
from .quotas import Grant, QuotaEngine
from .settings import Settings
from .tenants import TenantStore
from .types import Decision, Identity, RequestInfo, TenantConfig

log = logging.getLogger("tenantkit")


class _WouldBlock(Exception):
    """A cache missed on the event loop: redo the lookup in a worker thread."""


_AUDITED_DENIALS = (PolicyDenied, QuotaExceeded)

_blocking_allowed: ContextVar[bool] = ContextVar("tenantkit.blocking", default=True)

# Paths whose routing answers are remembered; past this many, new paths are computed each time.
_PATH_MEMO_SIZE = 4096


def _ok(healthy: bool) -> str:
    return "ok" if healthy else "error"


def default_on_reject(request: RequestInfo, exc: HTTPError) -> Decision:
    """Render a rejection as an RFC 9457 problem document."""
    return problem_decision(exc, instance=request.path)


class TenantKit:
    """Build every pipeline stage from ``Settings`` (each stage may be passed in instead)."""

    def __init__(
        self,
        settings: Settings | None = None,
        *,
        engine: Engine | None = None,
        tenant_store: TenantStore | None = None,
        api_key_store: APIKeyStore | None = None,
        quotas: QuotaEngine | None = None,
        policy: Policy | None = None,
        identity: IdentityChain | None = None,
        on_reject: RejectHook | None = None,
        call_counter: CallCounter | None = None,
        denials: DenialHook | None = None,
    ) -> None:
        self.settings = settings = settings or Settings()
        self.engine = engine or make_engine(settings.database_url)
        self.tenants = tenant_store or TenantStore(self.engine, cache=settings.cache)
        if api_key_store is None and settings.api_key_secret:
            api_key_store = APIKeyStore(
                self.engine,
                secret=settings.api_key_secret,
                cache=settings.cache,
                environment=settings.api_key_environment,
            )
        if api_key_store is None and "api_key" in settings.resolvers and identity is None:
            raise ConfigurationError(
                "the 'api_key' resolver needs api_key_secret (TENANTKIT_API_KEY_SECRET)"
            )
        self.api_keys = api_key_store
        self.quotas = quotas or QuotaEngine(
            settings.quota,
            key_prefix=settings.quota.key_prefix,
            max_keys=settings.quota.max_keys,
            storage_options={"max_connections": settings.quota.redis_max_connections},
        )
        self.policy = policy or Policy()
        verify = self._verify_api_key if api_key_store is not None else None
        self.identity = identity or build_chain(settings, verify_api_key=verify)
        self.on_reject: RejectHook = on_reject or default_on_reject
        self.call_counter = call_counter
        self.denials = denials
        # path -> (excluded, policy route), for the settings' prefixes it was computed with.
        self._path_memo: dict[str, tuple[bool, bool]] = {}
        self._memo_prefixes = (settings.exclude_paths, settings.policy_paths)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **kwargs: Any) -> TenantKit:
        """Build a kit from ``TENANTKIT_*`` environment variables."""
        return cls(Settings.from_env(environ), **kwargs)

    def create_all(self) -> None:
        """Create tenantkit's own tables (tenants, API keys) if they do not exist."""
        self.tenants.create_all()
        if self.api_keys is not None:
            self.api_keys.create_all()

    # -- routing -----------------------------------------------------------------

    def is_excluded(self, path: str) -> bool:
        """Return whether ``path`` skips the pipeline (health, docs, admin...)."""
        return self._path_rules(path)[0]

    def reads_body(self, request: RequestInfo) -> bool:
        """Return whether the pipeline needs the body (policy and token routes)."""
        return (
            request.method not in ("GET", "HEAD", "OPTIONS") and self._path_rules(request.path)[1]
        )

    def _path_rules(self, path: str) -> tuple[bool, bool]:
        """Return ``(excluded, policy route)`` for ``path``, memoized: asked often per request."""
        settings = self.settings
        memo = self._path_memo
        excluded, policy = self._memo_prefixes
        if excluded is not settings.exclude_paths or policy is not settings.policy_paths:
            memo.clear()  # the settings were replaced: forget answers for the old prefixes
            self._memo_prefixes = (settings.exclude_paths, settings.policy_paths)
        rules = memo.get(path)
        if rules is None:
            rules = (
                path_matches(path, settings.exclude_paths),
                path_matches(path, settings.policy_paths),
            )
            if len(memo) < _PATH_MEMO_SIZE:
                memo[path] = rules
        return rules

    # -- admission ---------------------------------------------------------------

    def identify(self, request: RequestInfo) -> Caller:
        """Run the stages that need no body (sync): resolve the caller, load its tenant.

        Raises the rejection of the caller itself (401, 403, 404, 503), and the
        429 of a caller whose limits refuse it whatever its body reserves
        (``QuotaEngine.precheck``, which charges nothing). An adapter calls it
        before it reads a body, then passes the body and the caller to ``admit``.
        """
        caller = self._identify(request, True)
        try:
            self.quotas.precheck(caller[2])
        except QuotaExceeded as exc:
            limited(exc, caller[0], caller[2])
            if self.denials is not None:
                self.denials(caller[0], request, exc)
            raise
        return caller

    async def identify_async(self, request: RequestInfo) -> Caller:
        """``identify`` without blocking the event loop (cache misses go to a thread)."""
        try:
            caller = self._identify(request, False)
        except _WouldBlock:
            caller = await anyio.to_thread.run_sync(self._identify, request, True)
        try:
            self.quotas.precheck(caller[2])  # memory, or Redis' deny cache: never waits
        except QuotaExceeded as exc:
            limited(exc, caller[0], caller[2])
            if self.denials is not None:
                await anyio.to_thread.run_sync(self.denials, caller[0], request, exc)
            raise
        return caller

    def admit(
        self, request: RequestInfo, body: bytes | None = None, caller: Caller | None = None
    ) -> Admission:
        """Admit a request (sync) or raise the ``HTTPError`` that rejects it.

        ``caller`` is ``identify``'s answer when the adapter asked it before
        reading ``body``; otherwise the caller is identified here.
        """
        identity, tenant, limits = caller or self._identify(request, True)
        try:
            tokens = self._check_policy(request, tenant, body)
            self._check_calls(tenant)
            grant = self.quotas.acquire(limits, tokens=tokens) if limits else None
        except HTTPError as exc:
            limited(exc, identity, limits)
            if self.denials is not None and isinstance(exc, _AUDITED_DENIALS):
                self.denials(identity, request, exc)
            raise
        return self._admitted(request, identity, tenant, grant, tokens)

    async def admit_async(
        self, request: RequestInfo, body: bytes | None = None, caller: Caller | None = None
    ) -> Admission:
        """Admit a request without blocking the event loop (cache misses go to a thread)."""
        if caller is None:
            try:
                caller = self._identify(request, False)
            except _WouldBlock:
                caller = await anyio.to_thread.run_sync(self._identify, request, True)
        identity, tenant, limits = caller
        try:
            tokens = self._check_policy(request, tenant, body)
            if not self._check_calls(tenant, blocking=False):
                # The counter's first look at this tenant this cycle reads the database.
                await anyio.to_thread.run_sync(self._check_calls, tenant)
            grant = None
            if limits:
                quotas = self.quotas
                if quotas.waits:
                    grant = await quotas.acquire_async(limits, tokens=tokens)
                else:  # memory: no coroutine per request
                    grant = quotas.acquire(limits, tokens=tokens)
        except HTTPError as exc:
            limited(exc, identity, limits)
            if self.denials is not None and isinstance(exc, _AUDITED_DENIALS):
                await anyio.to_thread.run_sync(self.denials, identity, request, exc)
            raise
        return self._admitted(request, identity, tenant, grant, tokens)

    def finish(self, admission: Admission, *, failed: bool = False) -> None:
        """Settle the token reservation with the reported count, or release it on failure.

        A 5xx response without a reported count counts as a failure.
        """
        grant = admission.grant
        if grant is None:
            return
        if admission.released(failed):
            self.quotas.release(grant)
        elif admission.context.meter.used is not None:
            self.quotas.settle(grant, admission.context.meter.used)

    async def finish_async(self, admission: Admission, *, failed: bool = False) -> None:
        """Async ``finish`` for the ASGI path."""
        grant = admission.grant
        if grant is None:
            return
        if admission.released(failed):
            await self.quotas.release_async(grant)
        elif admission.context.meter.used is not None:
            await self.quotas.settle_async(grant, admission.context.meter.used)

    def finish_soon(self, admission: Admission, *, failed: bool = False) -> None:
        """``finish`` for the event loop: the Redis round trip runs in a background task."""
        grant = admission.grant
        if grant is None:
            return
        if admission.released(failed):
            self.quotas.release_soon(grant)
        elif admission.context.meter.used is not None:
            self.quotas.settle_soon(grant, admission.context.meter.used)

    def reject(
        self, request: RequestInfo, exc: HTTPError, caller: Caller | None = None
    ) -> Decision:
        """Turn a rejection into the response decision through ``on_reject``.

        ``caller``: who ``identify`` had found before the rejection (a body too
        large or unreadable), so that it names the caller and its limits.
        """
        if caller is not None:
            limited(exc, caller[0], caller[2])
        return self.on_reject(request, exc)

    # -- health ------------------------------------------------------------------

    def health(self) -> dict[str, str]:
        """Check the database and the quota storage: ``{"database": "ok"|"error", ...}``."""
        return {
            "database": _ok(self._database_ok()),
            "quota_storage": _ok(self.quotas.health()),
        }

    async def health_async(self) -> dict[str, str]:
        """``health`` without blocking the event loop."""
        database = await anyio.to_thread.run_sync(self._database_ok)
        return {"database": _ok(database), "quota_storage": _ok(await self.quotas.health_async())}

    def _database_ok(self) -> bool:
        try:
            with self.engine.connect() as conn:
                conn.execute(text("SELECT 1"))
        except Exception:  # any driver error means the check failed
            log.warning("tenantkit health: database check failed", exc_info=True)
            return False
        return True

    # -- stages ------------------------------------------------------------------

    def _identify(self, request: RequestInfo, blocking: bool) -> Caller:
        token = _blocking_allowed.set(blocking)
        try:
            identity = self.identity.resolve(request)
            tenant = self._tenant(identity.tenant_id, blocking)
        except StorageError as exc:
            log.error("tenantkit: the tenant store is unavailable: %s", exc)
            raise ServiceUnavailable(
                "the tenant store is unavailable", headers={"Retry-After": "1"}
            ) from exc
        finally:
            _blocking_allowed.reset(token)
        if not tenant.active:
            raise TenantSuspended(f"tenant {tenant.id!r} is suspended", reason="suspended")
        return identity, tenant, limit_set_for(tenant, identity)

    def _tenant(self, tenant_id: str, blocking: bool) -> TenantConfig:
        if blocking:
            return self.tenants.get(tenant_id)
        cached = self.tenants.peek(tenant_id)
        if cached is tenants.MISS:
            raise _WouldBlock
        if cached is None:
            raise TenantNotFound(f"tenant {tenant_id!r} not found", tenant_id=tenant_id)
        return cached

    def _verify_api_key(self, key: str) -> Identity:
        store = self.api_keys
        if store is None:  # pragma: no cover - the chain is built without the resolver
            raise Unauthorized("API keys are not enabled")
        if _blocking_allowed.get():
            return store.verify_identity(key)
        # On the event loop: answer from the cache or redo the lookup in a thread.
        cached = store.peek_identity(key)
        if cached is apikeys.MISS:
            raise _WouldBlock
        if cached is None:
            raise Unauthorized(apikeys.INVALID_KEY)
        return cached

    def _check_calls(self, tenant: TenantConfig, blocking: bool = True) -> bool:
        """Check the monthly call cap; ``False`` if that needs a store read and may not block."""
        counter = self.call_counter
        if counter is None:
            return True
        try:
            if blocking:
                counter.check(tenant)
                return True
            return counter.check_nowait(tenant)
        except StorageError as exc:
            log.error("tenantkit: the usage store is unavailable: %s", exc)
            raise ServiceUnavailable(
                "the usage store is unavailable", headers={"Retry-After": "1"}
            ) from exc

    def _check_policy(self, request: RequestInfo, tenant: TenantConfig, body: bytes | None) -> int:
        if body is None or not self.reads_body(request):
            return 0
        coding = request.headers.get("content-encoding")
        document = parse_json_object(decode_body(body, coding, self.settings.max_body_bytes))
        self.policy.check(tenant, document)
        return estimate_tokens(document, self.settings.quota.default_token_estimate)

    def _admitted(
        self,
        request: RequestInfo,
        identity: Identity,
        tenant: TenantConfig,
        grant: Grant | None,
        tokens: int,
    ) -> Admission:
        if self.call_counter is not None:
            self.call_counter.add(tenant.id)
        # Positional: the frozen dataclasses' fastest constructor call on the hot path.
        ctx = TenantContext(
            identity,
            tenant,
            request.request_id,
            request.client,
            request.headers.get("user-agent"),
            TokenMeter(tokens),
        )
        headers = grant.headers() if grant is not None else []
        return Admission(identity, tenant, ctx, grant, headers)
