"""Translate ``stripe`` SDK errors into tenantkit errors that render as problem documents."""

from __future__ import annotations

import stripe

from .errors import (
    BadRequest,
    ConfigurationError,
    HTTPError,
    PaymentRequired,
    ServiceUnavailable,
    TenantKitError,
)

DUPLICATE_IDENTIFIER = "already exists with identifier"


def is_duplicate_meter_event(exc: stripe.StripeError) -> bool:
    """Return whether Stripe refused a meter event because its identifier was already seen."""
    return isinstance(exc, stripe.InvalidRequestError) and DUPLICATE_IDENTIFIER in str(
        exc.user_message or exc
    )


def is_transient(exc: stripe.StripeError) -> bool:
    """Return whether retrying the same request later may succeed."""
    if isinstance(exc, stripe.APIConnectionError | stripe.RateLimitError):
        return True
    if isinstance(exc, stripe.InvalidRequestError | stripe.CardError):
        return False
    if isinstance(exc, stripe.AuthenticationError | stripe.PermissionError):
        return False
    status = exc.http_status or 0
    return status >= 500 or status in (408, 409, 429) or status == 0


def translate(exc: stripe.StripeError, action: str) -> TenantKitError:
    """Return the tenantkit error for a failed Stripe call (raise it ``from exc``)."""
    message = f"{action}: {exc.user_message or exc}"
    if isinstance(exc, stripe.AuthenticationError | stripe.PermissionError):
        return ConfigurationError(f"{message} (check the Stripe API key)")
    if isinstance(exc, stripe.CardError):
        error: HTTPError = PaymentRequired(message, reason="card_declined", code=exc.code)
        return error
    if is_transient(exc):
        return ServiceUnavailable(
            message, reason="stripe_unavailable", headers={"Retry-After": "5"}
        )
    return BadRequest(message, reason="stripe_rejected", code=exc.code)
