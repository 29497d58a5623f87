"""The exception tree and its problem documents."""

from __future__ import annotations

import pytest

from tenantkit import errors
from tenantkit._request import path_matches, problem_decision, request_id_from


def test_every_http_error_renders_a_problem() -> None:
    """Each HTTPError subclass renders type, title, status, detail and extra fields."""
    classes = [c for c in vars(errors).values() if isinstance(c, type)]
    http = [c for c in classes if issubclass(c, errors.HTTPError) and c is not errors.HTTPError]
    assert len(http) >= 14
    for cls in http:
        problem = cls("why", reason="r").to_problem("/x")
        assert problem["status"] == cls.status
        assert 400 <= cls.status < 600
        assert problem["type"].endswith(cls.slug)
        assert problem["detail"] == "why"
        assert problem["instance"] == "/x"
        assert problem["reason"] == "r"


def test_unauthorized_carries_www_authenticate() -> None:
    """401 problems tell the client how to authenticate."""
    exc = errors.Unauthorized("missing credentials")
    assert exc.headers["WWW-Authenticate"].startswith("Bearer")


@pytest.mark.parametrize(
    ("child", "parent"),
    [
        (errors.ConfigurationError, ValueError),
        (errors.ValidationError, ValueError),
        (errors.NoTenantError, LookupError),
        (errors.TenantMismatch, errors.Forbidden),
        (errors.TenantNotFound, errors.NotFound),
        (errors.QuotaExceeded, errors.HTTPError),
        (errors.HTTPError, errors.TenantKitError),
    ],
)
def test_tree(child: type[Exception], parent: type[Exception]) -> None:
    """Subclasses also inherit the built-in meaning they share."""
    assert issubclass(child, parent)


def test_problem_decision_keeps_headers() -> None:
    """The default rejection keeps the error's headers (Retry-After on 429)."""
    decision = problem_decision(errors.QuotaExceeded("slow down", headers={"Retry-After": "3"}))
    assert decision.status == 429
    assert ("Retry-After", "3") in decision.headers


@pytest.mark.parametrize(
    ("path", "expected"),
    [("/health", True), ("/health/db", True), ("/healthz", False), ("/api/health", False)],
)
def test_path_matching_is_by_whole_segment(path: str, expected: bool) -> None:
    """Excluded paths match whole segments only."""
    assert path_matches(path, ["/health"]) is expected


def test_request_id_echo_or_generate() -> None:
    """A sane client request id is echoed; a missing or hostile one is replaced."""
    assert request_id_from("abc-123") == "abc-123"
    generated = request_id_from("bad id\r\nX-Injected: 1")
    assert len(generated) == 32 and generated.isalnum()
    assert request_id_from(None) != request_id_from(None)
    assert request_id_from("x" * 200) != "x" * 200


def test_root_exclusion_is_exact() -> None:
    """Excluding "/" excludes the root only, never every path."""
    assert path_matches("/", ["/"]) is True
    assert path_matches("/api/users", ["/"]) is False


def test_deeply_nested_json_is_400() -> None:
    """A body nested deeper than the parser's stack is a 400, never a RecursionError."""
    from tenantkit._request import parse_json_object

    with pytest.raises(errors.BadRequest, match="nested too deeply"):
        parse_json_object(b"[" * 100_000)
