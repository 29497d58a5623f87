"""``endpoint``: one decorator per view declaring who may call it and what it accepts.

The declaration does the work (credential kind, membership, role, body and
query validation) and is kept on the view, where ``openapi.py`` reads it, and
the end-to-end tests too: they walk ``app.url_map`` and learn from it which
routes need an admin.

Auth kinds:

- ``public``: nobody is identified (onboarding, sign-in, invitations, webhooks);
- ``member``: a user's JWT for the organization in the path, any role;
- ``admin``: the same, role ``owner`` or ``admin``; ``owner``: role ``owner``;
- ``api_key``: an API key of the organization holding ``scope``;
- ``user``: a user's JWT, whatever the path (their own account);
- ``platform``: ``Authorization: Bearer $ADMIN_TOKEN``.
"""

from __future__ import annotations

import functools
import hmac
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

from flask import g, request
from flask.typing import ResponseReturnValue

from tenantkit.errors import Forbidden, NotFound, Unauthorized
from tenantkit.types import Identity

from .context import platform
from .members import load_member
from .validation import Field, Schema, parse_json

AuthKind = Literal["public", "member", "admin", "owner", "api_key", "user", "platform"]
ROLES_FOR: dict[str, frozenset[str]] = {
    "member": frozenset({"owner", "admin", "member"}),
    "admin": frozenset({"owner", "admin"}),
    "owner": frozenset({"owner"}),
}
ORG_ARG = "org_id"


@dataclass(frozen=True, slots=True)
class Operation:
    """What ``/openapi.json`` says about one view, and how the view is guarded."""

    summary: str
    auth: AuthKind
    tag: str
    body: Schema | None = None
    query: Schema | None = None
    scope: str | None = None
    status: int = 200
    responses: tuple[int, ...] = ()
    response: str | None = None
    description: str = ""
    body_optional: bool = False
    headers: tuple[Field, ...] = ()


View = Callable[..., ResponseReturnValue]


def endpoint(
    summary: str,
    *,
    auth: AuthKind,
    tag: str,
    body: Schema | None = None,
    query: Schema | None = None,
    scope: str | None = None,
    status: int = 200,
    responses: tuple[int, ...] = (),
    response: str | None = None,
    description: str = "",
    body_optional: bool = False,
    headers: tuple[Field, ...] = (),
) -> Callable[[View], View]:
    """Guard a view and describe it; the view receives ``body=`` and ``query=`` when declared."""
    operation = Operation(
        summary,
        auth,
        tag,
        body,
        query,
        scope,
        status,
        responses,
        response,
        description,
        body_optional,
        headers,
    )

    def decorate(view: View) -> View:
        @functools.wraps(view)
        def guarded(**kwargs: Any) -> ResponseReturnValue:
            _authorize(operation, kwargs.get(ORG_ARG))
            _refuse_unstorable_ids(kwargs)
            if query is not None:
                kwargs["query"] = query.parse_query(request.args)
            if body is not None:
                raw = request.get_data(cache=True)
                document = {} if body_optional and not raw.strip() else parse_json(raw)
                kwargs["body"] = body.check(document)
            return view(**kwargs)

        guarded.operation = operation  # type: ignore[attr-defined]
        return guarded

    return decorate


def operation_of(view: Callable[..., Any]) -> Operation | None:
    """Return the ``Operation`` a view was declared with, if any."""
    found: Operation | None = getattr(view, "operation", None)
    return found


def identity() -> Identity:
    """Return the identity the tenantkit pipeline admitted for this request."""
    found: Identity | None = getattr(g, "identity", None)
    if found is None:  # a public route: the pipeline did not run
        raise Unauthorized("missing credentials")
    return found


def _authorize(op: Operation, org_id: str | None) -> None:
    if op.auth == "public":
        return
    if op.auth == "platform":
        _platform_admin()
        return
    who = identity()
    if org_id is not None and who.tenant_id != org_id:
        # Path-resolved routes never get here (the pipeline refused the mismatch);
        # routes such as /billing/<org_id> name the organization outside the prefix.
        raise NotFound("organization not found")
    if op.auth == "api_key":
        if who.source != "api_key":
            raise Forbidden("this route takes an API key (X-API-Key)", reason="api_key_required")
        if op.scope is not None and not who.has_scope(op.scope):
            raise Forbidden(
                f"the API key lacks the {op.scope!r} scope", reason="scope", scope=op.scope
            )
        return
    if who.source != "jwt" or who.subject is None:
        raise Forbidden("this route takes a user's bearer token", reason="user_token_required")
    member = load_member(who)
    g.member = member
    if op.auth in ROLES_FOR and member.role not in ROLES_FOR[op.auth]:
        raise Forbidden(
            f"this needs the role {' or '.join(sorted(ROLES_FOR[op.auth]))}",
            reason="role",
            role=member.role,
        )


def _refuse_unstorable_ids(path_args: dict[str, Any]) -> None:
    """404 for a path id no row can hold (NUL, a lone surrogate); PostgreSQL cannot compare it."""
    for name, value in path_args.items():
        if isinstance(value, str) and not _storable(value):
            raise NotFound(f"{name.removesuffix('_id')} not found")


def _storable(text: str) -> bool:
    if "\x00" in text:
        return False
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _platform_admin() -> None:
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    expected = platform().config.admin_token
    if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip(), expected):
        raise Unauthorized("the platform admin token is required")
