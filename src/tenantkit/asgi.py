"""Pure ASGI middleware: translate a request into the pipeline and its decision back.

Starlette, FastAPI or any ASGI app::

    app = TenantKitMiddleware(app, kit)
"""

from __future__ import annotations

import logging

from starlette.datastructures import MutableHeaders
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ._admission import Admission, Caller
from ._request import content_length, parse_reported_tokens, problem_bytes, request_id_from
from .context import bind, reset
from .errors import PROBLEM_CONTENT_TYPE, HTTPError, PayloadTooLarge
from .kit import TenantKit
from .types import RequestInfo

log = logging.getLogger("tenantkit")

_DENIAL = "websocket.http.response"  # the ASGI extension for a handshake's HTTP response


class TenantKitMiddleware:
    """Resolve, admit and scope every HTTP request; pass ``lifespan`` through."""

    def __init__(self, app: ASGIApp, kit: TenantKit) -> None:
        self.app = app
        self.kit = kit
        self._rid_header = kit.settings.request_id_header
        self._rid_header_key = self._rid_header.lower()
        self._token_header = kit.settings.quota.token_header.lower()
        self._rid_key = self._rid_header.lower().encode("latin-1")
        self._token_key = self._token_header.encode("latin-1")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        headers = _header_map(scope["headers"])
        request_id = request_id_from(headers.get(self._rid_header_key))
        info = _request_info(scope, headers, request_id)
        kit = self.kit
        if kit.is_excluded(info.path):
            await self.app(scope, receive, self._stamp(send, request_id))
            return
        caller: Caller | None = None
        try:
            body = None
            pending: list[Message] = []
            if scope["type"] == "http" and kit.reads_body(info):
                # Identified first: a caller refused for who it is never uploads the body.
                caller = await kit.identify_async(info)
                body = await _buffer_body(
                    receive, kit.settings.max_body_bytes, headers.get("content-length"), pending
                )
            admission = await kit.admit_async(info, body, caller)
        except HTTPError as exc:  # the rejection reads no body: nothing to replay
            await self._reject(info, exc, scope, receive, send, caller)
            return
        await self._run(admission, scope, receive, send, request_id, body, pending)

    async def _run(
        self,
        admission: Admission,
        scope: Scope,
        receive: Receive,
        send: Send,
        request_id: str,
        body: bytes | None,
        pending: list[Message],
    ) -> None:
        meter = admission.context.meter
        complete = disconnected = False
        replayed = body is None

        async def send_wrapper(message: Message) -> None:
            nonlocal complete
            kind = message["type"]
            if kind == "http.response.start":
                admission.status = message["status"]
                extra = _encode_headers(admission.headers)
                stamp = (self._rid_key, request_id.encode("latin-1"))
                reported = _edit_headers(message, self._token_key, extra, stamp)
                if reported is not None:
                    meter.used = parse_reported_tokens(reported, meter.used)
            elif kind == "http.response.pathsend" or (
                kind in ("http.response.body", "http.response.zerocopysend")
                and not message.get("more_body")
            ):
                complete = True
            await send(message)

        async def receive_wrapper() -> Message:
            # Replays the buffered body first, then notes a disconnect before completion.
            nonlocal disconnected, replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            message = pending.pop(0) if pending else await receive()
            if message["type"] == "http.disconnect" and not complete:
                disconnected = True
            return message

        token = bind(admission.context)
        failed = True
        try:
            await self.app(scope, receive_wrapper, send_wrapper)
            # A response never started or never finished (the client left, or the app
            # returned early) served nothing: the reservation goes back (a reported count
            # stands, see Admission.released).
            # (A websocket sends no http.response: its tokens stand as reported.)
            failed = not complete if scope["type"] == "http" else disconnected
        finally:
            # A response sent to its last body chunk was delivered, even if the app
            # raised afterwards (a BackgroundTask runs after the body): it is settled.
            failed = failed and not complete
            reset(token)
            # Synchronous on purpose: it only schedules the settle, so it also runs
            # when this task is being cancelled (no shielded await needed).
            try:
                self.kit.finish_soon(admission, failed=failed)
            except Exception:  # settling must never turn a served response into an error
                log.exception("tenantkit: settling the token reservation failed")

    async def _reject(
        self,
        info: RequestInfo,
        exc: HTTPError,
        scope: Scope,
        receive: Receive,
        send: Send,
        caller: Caller | None = None,
    ) -> None:
        decision = self.kit.reject(info, exc, caller)
        if scope["type"] == "websocket" and _DENIAL not in (scope.get("extensions") or ()):
            # No way to answer the handshake with a response: refuse it (a 403 to the client).
            await send({"type": "websocket.close", "code": 1008, "reason": exc.detail[:120]})
            return
        # An HTTP response, or a websocket handshake's denial response (the same problem
        # document, status and headers: 401 with its challenge, 429 with Retry-After).
        headers = dict(decision.headers)
        headers[self._rid_header] = info.request_id or ""
        response = Response(
            problem_bytes(decision),
            status_code=decision.status,
            headers=headers,
            media_type=PROBLEM_CONTENT_TYPE,
        )
        await response(scope, receive, send)

    def _stamp(self, send: Send, request_id: str) -> Send:
        async def stamped(message: Message) -> None:
            if message["type"] == "http.response.start":
                MutableHeaders(scope=message)[self._rid_header] = request_id
            await send(message)

        return stamped


def _edit_headers(
    message: Message,
    drop: bytes,
    extra: list[tuple[bytes, bytes]],
    stamp: tuple[bytes, bytes],
) -> str | None:
    """Edit a response start's headers in one pass; return the first dropped value.

    The same as ``MutableHeaders``: read and delete every ``drop`` header,
    replace the app's headers named in ``extra`` with ``extra`` (one value per
    rate-limit field, never two that disagree), then set ``stamp`` (replacing
    its first occurrence, deleting the others, else appending). Names are
    lower-case bytes.
    """
    name = stamp[0]
    ours = [pair[0] for pair in extra]
    reported: str | None = None
    out: list[tuple[bytes, bytes]] = []
    at = -1
    for pair in message.get("headers", ()):
        key = pair[0]
        if key == drop:
            if reported is None:
                reported = pair[1].decode("latin-1")
        elif key == name:
            if at < 0:
                at = len(out)
                out.append(stamp)
        elif key not in ours:
            out.append(pair)
    for pair in extra:
        if pair[0] != name:
            out.append(pair)
        elif at < 0:
            at = len(out)
            out.append(stamp)
    if at < 0:
        out.append(stamp)
    message["headers"] = out
    return reported


# The admissions' header names (the rate-limit dialects': a handful) as ASGI wants them,
# encoded once rather than per response; bounded in case an app adds its own.
_ENCODED_NAMES: dict[str, bytes] = {}
_ENCODED_NAMES_MAX = 256


def _encode_headers(headers: list[tuple[str, str]]) -> list[tuple[bytes, bytes]]:
    """Encode headers for an ASGI message: lower-case latin-1 names, latin-1 values."""
    encoded = []
    for name, value in headers:
        key = _ENCODED_NAMES.get(name)
        if key is None:
            key = name.lower().encode("latin-1")
            if len(_ENCODED_NAMES) < _ENCODED_NAMES_MAX:
                _ENCODED_NAMES[name] = key
        encoded.append((key, value.encode("latin-1")))
    return encoded


def _header_map(raw: list[tuple[bytes, bytes]]) -> dict[str, str]:
    """Map lower-case names to values; a repeated header's lines are joined with ", ".

    As a WSGI server does (RFC 9110, section 5.3): picking one line would let a
    client's X-Tenant-ID or Authorization ahead of a gateway's win, while a
    joined value is no valid tenant id or credential, so the request fails closed.
    """
    headers: dict[str, str] = {}
    for name, value in raw:
        key, text = name.decode("latin-1"), value.decode("latin-1")
        seen = headers.get(key)
        headers[key] = text if seen is None else f"{seen}, {text}"
    return headers


def _request_info(scope: Scope, headers: dict[str, str], request_id: str) -> RequestInfo:
    client = scope.get("client")
    query: bytes = scope.get("query_string", b"")
    return RequestInfo(  # positional: the frozen dataclass's fastest call, in field order
        scope.get("method", "GET"),
        _route_path(scope),
        headers,
        client[0] if client else None,
        scope.get("scheme", "http"),
        query.decode("latin-1") if query else "",
        request_id,
    )


def _route_path(scope: Scope) -> str:
    """The path the app routes on: ``path`` less ``root_path``, as WSGI's ``PATH_INFO``.

    Behind ``--root-path`` or inside a ``Mount``, ``path`` starts with
    ``root_path`` while Starlette routes on the rest (``get_route_path``); the
    policy and exclusion prefixes name routes, so they must see the same.
    """
    path: str = scope["path"]
    root: str = scope.get("root_path", "")
    if root and path.startswith(root) and path[len(root) : len(root) + 1] in ("", "/"):
        return path[len(root) :] or "/"
    return path


async def _buffer_body(
    receive: Receive, limit: int, declared: str | None, pending: list[Message]
) -> bytes:
    """Read the whole body (at most ``limit`` bytes); a message past it goes to ``pending``."""
    length = content_length(declared)
    if length is not None and length > limit:
        raise PayloadTooLarge(f"the body exceeds {limit} bytes", limit=limit)
    message = await receive()
    if message["type"] == "http.request" and not message.get("more_body", False):
        body: bytes = message.get("body", b"")  # the usual body: one message
        if len(body) > limit:
            raise PayloadTooLarge(f"the body exceeds {limit} bytes", limit=limit)
        return body
    chunks: list[bytes] = []
    size = 0
    while True:
        if message["type"] != "http.request":
            pending.append(message)
            break
        chunk: bytes = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge(f"the body exceeds {limit} bytes", limit=limit)
        chunks.append(chunk)
        if not message.get("more_body", False):
            break
        message = await receive()
    return b"".join(chunks)
