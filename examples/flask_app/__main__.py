"""``python -m examples.flask_app``: serve the platform with waitress on ``APP_ADDR``.

Creates its tables on start (SQLite file ``flask_app.db`` by default);
``DATABASE_URL`` and ``QUOTA_STORAGE_URI`` switch to PostgreSQL (with
row-level security) and Redis. Secrets left unset are generated and printed
once. Stops cleanly on SIGINT and SIGTERM.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
from types import FrameType

from waitress.server import create_server  # type: ignore[import-untyped]

from .app import create_app
from .config import DEFAULT_ADDR, AppConfig
from .context import EXTENSION_KEY
from .jobs import start_jobs

GRACE_SECONDS = 5
SECRET_VARIABLES = {
    "jwt_secret": "JWT_SECRET",
    "admin_token": "ADMIN_TOKEN",
    "api_key_secret": "API_KEY_SECRET",
    "stripe_webhook_secret": "STRIPE_WEBHOOK_SECRET",
}


def main() -> int:
    """Run the server until interrupted; return the exit status."""
    logging.basicConfig(
        level=os.environ.get("LOG_LEVEL", "INFO"),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    host, port = _address(os.environ.get("APP_ADDR", DEFAULT_ADDR))
    config = AppConfig.from_env()
    for name in config.generated:
        if name == "stripe_webhook_secret" and not config.stripe_secret_key:
            continue  # without Stripe nobody could sign with it; it only refuses webhooks
        # Printed once, now: they are not stored anywhere else.
        print(f"generated {SECRET_VARIABLES[name]}={getattr(config, name)}", flush=True)
    app = create_app(config)
    stop_jobs = start_jobs(app.extensions[EXTENSION_KEY])
    server = create_server(app, host=host, port=port, threads=int(os.environ.get("THREADS", "8")))

    def stop(signum: int, _frame: FrameType | None) -> None:
        logging.getLogger("examples.flask_app").info("signal %d: shutting down", signum)
        server.close()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    print(f"serving on http://{host}:{server.effective_port}", flush=True)
    try:
        server.run()  # returns once stop() closed the listening socket
    except (KeyboardInterrupt, OSError):
        pass
    finally:
        # Requests already accepted finish before the process goes.
        server.task_dispatcher.shutdown(timeout=GRACE_SECONDS)
        stop_jobs()
        app.extensions[EXTENSION_KEY].close()
    return 0


def _address(value: str) -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        sys.exit(f"APP_ADDR={value!r} must look like 127.0.0.1:8081")
    return host.strip("[]") or "127.0.0.1", int(port)


if __name__ == "__main__":
    sys.exit(main())
