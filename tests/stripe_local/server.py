"""Run localstripe on 127.0.0.1 with the Billing Meter endpoints and three patches.

Usage: ``python tests/stripe_local/server.py --port N``. One process serves
the whole Stripe API the tests use, because a ``StripeClient`` has a single
API base address.

Patches to localstripe 1.15 (it targets the 2017 API and a single machine):

1. It binds ``::`` (every interface); we bind 127.0.0.1 only.
2. It pickles its store to the fixed path ``/tmp/localstripe.pickle`` after
   every change, which concurrent test runs would share; we keep it in memory.
3. It ignores ``Idempotency-Key``; we replay the first answer to a repeated
   key and refuse the key with other parameters, as Stripe does.
4. Subscription items take ``price`` today (``plan`` is the legacy name), and
   ``customer.subscription.updated`` is never emitted; we map ``price`` to
   ``plan`` and emit the event after an update, as Stripe does.

Control endpoints for tests: ``GET /_config/meter/events``, ``POST /_config/meter/clock``
(``offset`` seconds added to the meter's clock), ``POST /_config/meter/fail``
(``count`` next requests answer 500).
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web
from localstripe import resources, server  # type: ignore[import-untyped]

try:
    from tests.stripe_local.meter import MeterLedger
except ImportError:  # run as a script: this directory is on sys.path
    from meter import MeterLedger  # type: ignore[no-redef,import-not-found]

_offset = [0.0]
ledger = MeterLedger(clock=lambda: time.time() + _offset[0])


def _patch_localstripe() -> None:
    resources.Store.dump_to_disk = lambda self: None

    def price_to_plan(items: Any) -> Any:
        if isinstance(items, list):
            for item in items:
                if isinstance(item, dict) and "price" in item:
                    item["plan"] = item.pop("price")
        return items

    original_init = resources.Subscription.__init__
    original_update = resources.Subscription._update

    def init(self: Any, *args: Any, items: Any = None, **kwargs: Any) -> None:
        original_init(self, *args, items=price_to_plan(items), **kwargs)

    def update(self: Any, *args: Any, items: Any = None, **kwargs: Any) -> None:
        original_update(self, *args, items=price_to_plan(items), **kwargs)
        resources.schedule_webhook(resources.Event("customer.subscription.updated", self))

    resources.Subscription.__init__ = init
    resources.Subscription._update = update


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
_idempotent: dict[tuple[str, str, str], tuple[bytes, int, bytes]] = {}


@web.middleware
async def idempotency(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Replay the first answer to a POST with the same ``Idempotency-Key`` (as Stripe does)."""
    key = request.headers.get("Idempotency-Key")
    if request.method != "POST" or not key:
        return await handler(request)
    body = await request.read()
    slot = (request.headers.get("Authorization", ""), request.path, key)
    if slot in _idempotent:
        sent, status, answer = _idempotent[slot]
        if sent != body:
            error = {
                "type": "idempotency_error",
                "message": "Keys for idempotent requests can only be used with the same "
                "parameters they were first used with.",
            }
            return web.json_response({"error": error}, status=400)
        return web.Response(body=answer, status=status, content_type="application/json")
    response = await handler(request)
    if isinstance(response, web.Response) and response.body is not None and response.status < 500:
        _idempotent[slot] = (body, response.status, bytes(response.body))  # type: ignore[arg-type]
    return response


async def meter_events(request: web.Request) -> web.Response:
    if not request.headers.get("Authorization", "").startswith("Bearer sk_"):
        body = {"error": {"type": "invalid_request_error", "message": "Invalid API Key."}}
        return web.json_response(body, status=401)
    status, body, retry = ledger.create(request.content_type, await request.read())
    headers = {"Stripe-Should-Retry": "true" if retry else "false"} if status >= 400 else {}
    return web.json_response(body, status=status, headers=headers)


async def list_meter_events(request: web.Request) -> web.Response:
    with ledger.lock:
        return web.json_response({"events": ledger.events, "requests": ledger.requests})


async def set_clock(request: web.Request) -> web.Response:
    _offset[0] = float((await request.post())["offset"])  # type: ignore[arg-type]
    return web.Response()


async def fail_next(request: web.Request) -> web.Response:
    with ledger.lock:
        ledger.fail_next = int((await request.post())["count"])  # type: ignore[arg-type]
    return web.Response()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    _patch_localstripe()
    app = server.app
    app.middlewares.insert(0, idempotency)
    app.router.add_post("/v1/billing/meter_events", meter_events)
    app.router.add_get("/_config/meter/events", list_meter_events)
    app.router.add_post("/_config/meter/clock", set_clock)
    app.router.add_post("/_config/meter/fail", fail_next)
    print(json.dumps({"listening": args.port}), flush=True)
    web.run_app(app, host="127.0.0.1", port=args.port, print=None, access_log=None)


if __name__ == "__main__":
    main()
