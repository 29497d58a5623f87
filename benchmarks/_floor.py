"""A measuring stick, not a limiter: the full stack's work for the benchmark request, hand-inlined.

One pure-ASGI function doing what tenantkit's full stack does for the benchmark's
``POST`` with header identity: find ``X-Tenant-ID`` among the raw headers, look
the tenant up in a dict, read the body once and replay it, parse the JSON, check
the model and tool allow-lists, estimate tokens with tenantkit's formula (prompt
characters / 4, 4 per message, the tools' compact JSON, ``max_tokens``), charge a
request and a token GCRA bucket together, bind tenantkit's context with a token
meter, add ``RateLimit-Policy``, ``RateLimit`` and ``X-Request-ID`` and settle the
tokens the handler reports. No configuration, no modules, no error handling (a
denial raises): what any Python middleware doing this work pays at the least.
"""

from __future__ import annotations

import json
import os
import threading
import time
from typing import Any

from tenantkit import context
from tenantkit.context import TenantContext, TokenMeter
from tenantkit.types import Identity, TenantConfig

NS = 1_000_000_000
PERIOD = 60 * NS
_COMPACT = json.JSONEncoder(separators=(",", ":"), check_circular=False)


def floor_middleware(app: Any, tenant: TenantConfig) -> Any:
    """Wrap ``app`` in the hand-inlined full stack for ``tenant`` (header identity)."""
    assert tenant.quota_requests_per_minute and tenant.quota_tokens_per_minute
    models = tenant.allowed_models or ()
    tools_allowed = tenant.allowed_tools or ()
    rq, tq = tenant.quota_requests_per_minute, tenant.quota_tokens_per_minute
    identity = Identity(tenant_id=tenant.id, source="header")
    tenants = {tenant.id.encode(): tenant}
    policy = (
        b'"tenant-requests";q=%d;w=60;qu="requests", "tenant-tokens";q=%d;w=60;tk-unit="tokens"'
        % (rq, tq)
    )
    buckets = {"requests": 0, "tokens": 0}
    lock = threading.Lock()

    async def middleware(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await app(scope, receive, send)
            return
        named = None
        for name, value in scope["headers"]:
            if name == b"x-tenant-id":
                named = value
        found = tenants[named]
        message = await receive()
        doc = json.loads(message["body"])
        if doc.get("model") not in models:
            raise PermissionError("model")
        tools = doc.get("tools") or []
        for tool in tools:
            if tool["function"]["name"] not in tools_allowed:
                raise PermissionError("tool")
        chars = sum(len(m["content"]) for m in doc["messages"]) + len(_COMPACT.encode(tools))
        tokens = -(-chars // 4) + 4 * len(doc["messages"]) + doc.get("max_tokens", 256)
        now = time.monotonic_ns()
        with lock:
            r = max(buckets["requests"], now) + -(-PERIOD // rq)
            t = max(buckets["tokens"], now) + -(-tokens * PERIOD // tq)
            if r - now > PERIOD or t - now > PERIOD:
                raise PermissionError("quota")
            buckets["requests"], buckets["tokens"] = r, t
        state = b'"tenant-requests";r=%d;t=%d, "tenant-tokens";r=%d;t=%d' % (
            (PERIOD - (r - now)) * rq // PERIOD,
            -(-(r - now) // NS),
            (PERIOD - (t - now)) * tq // PERIOD,
            -(-(t - now) // NS),
        )
        request_id = os.urandom(16).hex()
        extra = [
            (b"ratelimit-policy", policy),
            (b"ratelimit", state),
            (b"x-request-id", request_id.encode()),
        ]
        meter = TokenMeter(tokens)
        client = scope.get("client")
        ctx = TenantContext(identity, found, request_id, client and client[0], None, meter)
        replayed = False

        async def replay() -> Any:
            nonlocal replayed
            if not replayed:
                replayed = True
                return message
            return await receive()

        async def stamped(reply: Any) -> None:
            if reply["type"] == "http.response.start":
                reply["headers"] = [*reply.get("headers", ()), *extra]
            await send(reply)

        token = context.bind(ctx)
        try:
            await app(scope, replay, stamped)
        finally:
            context.reset(token)
            if meter.used is not None and meter.used != tokens:
                with lock:
                    buckets["tokens"] -= (tokens - meter.used) * PERIOD // tq

    return middleware
