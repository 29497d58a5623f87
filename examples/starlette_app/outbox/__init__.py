"""The transactional outbox of task events and the worker that handles them."""

from .events import HANDLER_NAMES, emit
from .worker import OutboxWorker

__all__ = ["HANDLER_NAMES", "OutboxWorker", "emit"]
