"""``python -m examples.starlette_app``: serve the app with uvicorn on ``APP_ADDR``."""

from __future__ import annotations

import logging
import sys

import uvicorn

from .app import create_app
from .config import AppConfig, ConfigError


def main() -> int:
    """Read the environment, print generated secrets once, and serve until interrupted."""
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        config = AppConfig.from_env()
        port = config.port
    except ConfigError as exc:
        print(f"configuration error: {exc}", file=sys.stderr)
        return 2
    for name in config.generated:
        value = config.admin_token if name == "ADMIN_TOKEN" else config.jwt_secret
        # Shown once: set it in the environment to keep it across restarts.
        print(f"{name} was not set; generated for this run: {value}", flush=True)
    app = create_app(config)
    uvicorn.run(app, host=config.host, port=port, log_level="info", proxy_headers=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
