"""tenantkit example: the SaaS organization platform of seeds 000 and 004, on Flask.

Run it with ``python -m examples.flask_app``; see docs/flask-example.md.
"""

from __future__ import annotations

from .app import create_app
from .config import AppConfig
from .context import Clock

__all__ = ["AppConfig", "Clock", "create_app"]
