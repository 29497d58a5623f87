"""The public API: every name in __all__ exists, and every public name is in __all__."""

from __future__ import annotations

import subprocess
import sys

import tenantkit


def test_all_is_sorted_and_resolves() -> None:
    """Each name in tenantkit.__all__ is importable from the package."""
    for name in tenantkit.__all__:
        assert hasattr(tenantkit, name), name
    assert len(set(tenantkit.__all__)) == len(tenantkit.__all__)


def test_every_public_member_is_exported() -> None:
    """Names imported into tenantkit/__init__ and not private are listed in __all__."""
    public = {
        name
        for name, value in vars(tenantkit).items()
        if not name.startswith("_") and getattr(value, "__module__", "").startswith("tenantkit")
    }
    assert public <= set(tenantkit.__all__)


def test_version_comes_from_metadata() -> None:
    """__version__ is the installed distribution's version."""
    from importlib.metadata import version

    assert tenantkit.__version__ == version("tenantkit")


def test_core_import_does_not_import_web_frameworks() -> None:
    """Importing tenantkit imports neither Flask nor Stripe; adapters have their own paths."""
    code = (
        "import sys, tenantkit; print(','.join(m for m in ('flask', 'stripe') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""
