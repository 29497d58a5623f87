"""tenantkit's Starlette example: an AI-platform gateway and a team-task service.

Run it with ``python -m examples.starlette_app``; see docs/starlette-example.md.
"""

from .app import create_app
from .config import AppConfig

__all__ = ["AppConfig", "create_app"]
