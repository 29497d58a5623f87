"""Test helpers for usage and billing: databases, a local Stripe (localstripe) and meter server."""
