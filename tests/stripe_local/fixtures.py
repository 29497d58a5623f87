"""Start localstripe (with the meter endpoints) on 127.0.0.1 and talk to it from tests."""

from __future__ import annotations

import hashlib
import hmac
import importlib.util
import json
import socket
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import stripe

SERVER = Path(__file__).with_name("server.py")
API_KEY = "sk_test_tenantkit_local"
START_TIMEOUT = 30.0


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class LocalStripe:
    """A running local Stripe: its address, a client on it, and meter controls."""

    url: str

    def client(self) -> stripe.StripeClient:
        """Return a real ``StripeClient`` aimed here, without network retries."""
        return stripe.StripeClient(API_KEY, base_addresses={"api": self.url}, max_network_retries=0)

    def meter_events(self) -> list[dict[str, Any]]:
        """Return the meter events the server accepted, in order."""
        with urllib.request.urlopen(f"{self.url}/_config/meter/events", timeout=10) as resp:
            events: list[dict[str, Any]] = json.loads(resp.read())["events"]
            return events

    def meter_events_by_id(self) -> dict[str, int]:
        """Return accepted meter events as identifier -> value."""
        return {e["identifier"]: int(e["payload"]["value"]) for e in self.meter_events()}

    def meter_requests(self) -> int:
        """Return how many meter event requests the server received."""
        with urllib.request.urlopen(f"{self.url}/_config/meter/events", timeout=10) as resp:
            return int(json.loads(resp.read())["requests"])

    def set_meter_clock(self, offset_seconds: float) -> None:
        """Shift the meter server's clock (to let its 24-hour identifier memory lapse)."""
        self._post("/_config/meter/clock", {"offset": str(offset_seconds)})

    def fail_meter_requests(self, count: int) -> None:
        """Make the next ``count`` meter event requests answer 500."""
        self._post("/_config/meter/fail", {"count": str(count)})

    def events(self, type: str) -> list[dict[str, Any]]:
        """Return the Stripe events of ``type`` localstripe emitted, oldest first."""
        listed = self.client().v1.events.list(params={"type": type, "limit": 100})
        return sorted((e.to_dict() for e in listed.data), key=lambda e: e["created"])

    def _post(self, path: str, form: dict[str, str]) -> None:
        data = urllib.parse.urlencode(form).encode()
        with urllib.request.urlopen(f"{self.url}{path}", data=data, timeout=10):
            pass


@contextmanager
def running_localstripe() -> Iterator[LocalStripe]:
    """Run the server in a subprocess for the duration of the block, then stop it."""
    if importlib.util.find_spec("localstripe") is None:
        raise RuntimeError("localstripe is not installed: pip install -e '.[test]'")
    port = free_port()
    with tempfile.TemporaryFile() as log:
        proc = subprocess.Popen(
            [sys.executable, str(SERVER), "--port", str(port)],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        try:
            _wait_listening(proc, port, log)
            yield LocalStripe(f"http://127.0.0.1:{port}")
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def _wait_listening(proc: subprocess.Popen[bytes], port: int, log: Any) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            log.seek(0)
            raise RuntimeError(f"localstripe exited: {log.read().decode(errors='replace')}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"localstripe did not listen on 127.0.0.1:{port} in {START_TIMEOUT}s")


def sign(payload: str, secret: str, timestamp: int) -> str:
    """Return a ``Stripe-Signature`` header for ``payload``, computed as Stripe does."""
    mac = hmac.new(secret.encode(), f"{timestamp}.{payload}".encode(), hashlib.sha256)
    return f"t={timestamp},v1={mac.hexdigest()}"


def add_card(client: stripe.StripeClient, number: str = "4242424242424242") -> str:
    """Create a card payment method (test numbers) and return its id."""
    card: Any = {"number": number, "exp_month": 12, "exp_year": 2034, "cvc": "123"}
    return client.v1.payment_methods.create(params={"type": "card", "card": card}).id


def create_prices(client: stripe.StripeClient) -> dict[str, str]:
    """Create monthly prices for Starter and Pro; return plan name -> price id."""
    prices = {}
    for name, cents in (("starter", 2900), ("pro", 9900)):
        price_id = f"price_{name}_{free_port()}"
        params: Any = {
            "id": price_id,
            "amount": cents,
            "currency": "usd",
            "interval": "month",
            "product": {"name": name.title()},
        }
        client.v1.plans.create(params=params)
        prices[name] = price_id
    return prices
