"""Stripe's documented rules for ``POST /v1/billing/meter_events``, as a plain object.

No local Stripe implements Billing Meters, so the tests serve this ledger from
the localstripe process (see ``server.py``). The rules, from Stripe's API
reference for meter events:

- the body is form-encoded (``payload[value]=3``); a JSON body carries no params;
- ``event_name`` (at most 100 characters) and ``payload`` are required; the
  payload holds ``stripe_customer_id`` and a numeric ``value``;
- ``identifier`` (at most 100 characters; generated when absent) is unique in a
  rolling window of at least 24 hours: a repeat inside it is rejected with
  ``400 invalid_request_error`` "An event already exists with identifier ...",
  marked not retryable; after the window Stripe no longer remembers it;
- ``timestamp`` (Unix seconds, default now) lies within the past 35 calendar
  days and at most 5 minutes in the future.
"""

from __future__ import annotations

import re
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl

DEDUP_WINDOW = 24 * 3600
PAST_WINDOW = 35 * 86400
FUTURE_WINDOW = 5 * 60
_NUMBER = re.compile(r"^-?\d+(\.\d+)?$")


@dataclass
class MeterLedger:
    """Accepted meter events and the identifiers seen, with a settable clock."""

    clock: Callable[[], float] = time.time
    events: list[dict[str, Any]] = field(default_factory=list)
    seen: dict[str, float] = field(default_factory=dict)
    requests: int = 0
    fail_next: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def create(self, content_type: str, body: bytes) -> tuple[int, dict[str, Any], bool]:
        """Apply the rules to one request; return status, JSON body and should-retry."""
        with self.lock:
            self.requests += 1
            if self.fail_next > 0:
                self.fail_next -= 1
                return 500, _error("api_error", "simulated outage"), True
            params = _form(content_type, body)
            problem = _validate(params, self.clock())
            if problem is not None:
                return 400, problem, False
            now = self.clock()
            identifier = params.get("identifier") or f"gen_{uuid.uuid4().hex}"
            first_seen = self.seen.get(identifier)
            if first_seen is not None and now - first_seen < DEDUP_WINDOW:
                message = f"An event already exists with identifier {identifier}."
                return 400, _error("invalid_request_error", message), False
            self.seen[identifier] = now
            event = {
                "object": "billing.meter_event",
                "created": int(now),
                "event_name": params["event_name"],
                "identifier": identifier,
                "livemode": False,
                "payload": {k[8:-1]: v for k, v in params.items() if k.startswith("payload[")},
                "timestamp": int(params.get("timestamp") or now),
            }
            self.events.append(event)
            return 200, event, False

    def values_by_identifier(self) -> dict[str, int]:
        """Return accepted events as identifier -> value (tests compare these exactly)."""
        with self.lock:
            return {e["identifier"]: int(e["payload"]["value"]) for e in self.events}


def _form(content_type: str, body: bytes) -> dict[str, str]:
    if not content_type.startswith("application/x-www-form-urlencoded"):
        return {}
    pairs = parse_qsl(body.decode(), keep_blank_values=True)
    return {key: value for key, value in pairs}


def _validate(params: dict[str, str], now: float) -> dict[str, Any] | None:
    name = params.get("event_name")
    if not name:
        return _error("invalid_request_error", "Missing required param: event_name.", "event_name")
    if len(name) > 100:
        return _error("invalid_request_error", "event_name is too long.", "event_name")
    payload = {k: v for k, v in params.items() if k.startswith("payload[")}
    if not payload:
        return _error("invalid_request_error", "Missing required param: payload.", "payload")
    if not params.get("payload[stripe_customer_id]"):
        return _error(
            "invalid_request_error",
            "payload must contain stripe_customer_id.",
            "payload[stripe_customer_id]",
        )
    value = params.get("payload[value]")
    if value is None or not _NUMBER.fullmatch(value):
        return _error("invalid_request_error", "payload[value] must be a number.", "payload[value]")
    identifier = params.get("identifier")
    if identifier is not None and not 0 < len(identifier) <= 100:
        return _error("invalid_request_error", "identifier is too long.", "identifier")
    if "timestamp" in params:
        try:
            stamp = int(params["timestamp"])
        except ValueError:
            return _error("invalid_request_error", "Invalid integer: timestamp.", "timestamp")
        if stamp < now - PAST_WINDOW:
            message = "Timestamp must be within the past 35 calendar days."
            return _error("invalid_request_error", message, "timestamp")
        if stamp > now + FUTURE_WINDOW:
            message = "Timestamp must not be more than 5 minutes in the future."
            return _error("invalid_request_error", message, "timestamp")
    return None


def _error(kind: str, message: str, param: str | None = None) -> dict[str, Any]:
    error: dict[str, Any] = {"type": kind, "message": message}
    if param is not None:
        error["param"] = param
    return {"error": error}
