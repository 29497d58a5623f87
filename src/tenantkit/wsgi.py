"""WSGI middleware: the same pipeline as the ASGI one, for Flask, Django or any WSGI app.

The tenant context stays bound while the response iterable is produced and is
reset when the server closes it (a streamed body is generated after the app
returns). A server that never closes a response (PEP 3333 requires it) would
leave that tenant bound in its thread: the next request in the thread unbinds
it first, so it never runs under another request's tenant. Per-request data is
under ``environ["tenantkit.*"]``.
"""

from __future__ import annotations

import contextlib
import io
import logging
from collections.abc import Callable, Iterable, Iterator
from contextvars import ContextVar
from http import HTTPStatus
from types import TracebackType
from typing import TYPE_CHECKING

from ._admission import Admission, Caller
from ._request import (
    PROBLEM_HEADERS,
    content_length,
    parse_reported_tokens,
    problem_bytes,
    request_id_from,
)
from .context import TenantContext, bind, reset, unbind_if
from .errors import BadRequest, HTTPError, PayloadTooLarge
from .kit import TenantKit
from .types import RequestInfo

if TYPE_CHECKING:
    from _typeshed.wsgi import InputStream, StartResponse, WSGIApplication, WSGIEnvironment

log = logging.getLogger("tenantkit")

ENVIRON_IDENTITY = "tenantkit.identity"
ENVIRON_TENANT = "tenantkit.tenant"
ENVIRON_REQUEST_ID = "tenantkit.request_id"

# The context a request bound in this thread and has not reset yet (its response
# is still being served, or its server never closed it).
_open: ContextVar[TenantContext | None] = ContextVar("tenantkit.wsgi.open", default=None)

ExcInfo = tuple[type[BaseException], BaseException, TracebackType] | tuple[None, None, None]


class TenantKitWSGIMiddleware:
    """Resolve, admit and scope every request of a WSGI app."""

    def __init__(self, app: WSGIApplication, kit: TenantKit) -> None:
        self.app = app
        self.kit = kit
        self._rid_header = kit.settings.request_id_header
        self._rid_key = self._rid_header.lower()
        self._token_header = kit.settings.quota.token_header.lower()

    def __call__(self, environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        stale = _open.get()
        if stale is not None:  # a response of this thread the server never closed
            _open.set(None)
            if unbind_if(stale):
                log.warning("tenantkit: a WSGI response was never closed; its tenant is unbound")
        request_id = request_id_from(environ.get(_environ_key(self._rid_header)))
        environ[ENVIRON_REQUEST_ID] = request_id
        info = _request_info(environ, request_id)
        if self.kit.is_excluded(info.path):
            return self.app(environ, self._stamp(start_response, request_id))
        kit = self.kit
        caller: Caller | None = None
        try:
            body = None
            if kit.reads_body(info):
                # Identified first: a caller refused for who it is never uploads the body.
                caller = kit.identify(info)
                body = _read_body(environ, kit.settings.max_body_bytes)
            admission = kit.admit(info, body, caller)
        except HTTPError as exc:
            return self._reject(info, exc, start_response, caller)
        environ[ENVIRON_IDENTITY] = admission.identity
        environ[ENVIRON_TENANT] = admission.tenant
        return self._run(admission, environ, start_response, request_id)

    def _run(
        self,
        admission: Admission,
        environ: WSGIEnvironment,
        start_response: StartResponse,
        request_id: str,
    ) -> Iterable[bytes]:
        token = bind(admission.context)
        opened = _open.set(admission.context)
        finished = False

        def finish(failed: bool) -> None:
            nonlocal finished
            if finished:
                return
            finished = True
            # Closed from another context: nothing of ours is bound there.
            with contextlib.suppress(ValueError):
                reset(token)
                _open.reset(opened)
            try:
                self.kit.finish(admission, failed=failed)
            except Exception:
                log.exception("tenantkit: settling the token reservation failed")

        response = _ClosingIterator(finish)
        try:
            result = self.app(environ, self._stamp(start_response, request_id, admission, response))
            # Inside the try: a result whose iter() raises must not leave the tenant bound.
            return response.wrap(result)
        except BaseException:
            finish(True)
            raise

    def _stamp(
        self,
        start_response: StartResponse,
        request_id: str,
        admission: Admission | None = None,
        response: _ClosingIterator | None = None,
    ) -> StartResponse:
        """Wrap ``start_response``: add the request id and, when admitted, the rate-limit
        headers, and read the token header.

        Each replaces the app's headers of the same name (compared case-insensitively):
        one request id, the middleware's, as on the ASGI adapter.
        """
        token_header = self._token_header
        rid_key = self._rid_key
        stamp = (self._rid_header, request_id)

        def wrapped(
            status: str, headers: list[tuple[str, str]], exc_info: ExcInfo | None = None
        ) -> Callable[[bytes], object]:
            if admission is None:
                kept = [pair for pair in headers if pair[0].lower() != rid_key]
                return start_response(status, [*kept, stamp], exc_info)
            if response is not None:
                response.started = True
            admission.status = _status_code(status)
            added = admission.headers
            replaced = {name.lower() for name, _ in added}
            replaced.add(rid_key)
            out: list[tuple[str, str]] = []
            reported: str | None = None
            for name, value in headers:
                key = name.lower()
                if key == token_header:
                    if reported is None:  # the first line decides, as on the ASGI adapter
                        reported = value
                elif key not in replaced:
                    out.append((name, value))
            if reported is not None:
                meter = admission.context.meter
                meter.used = parse_reported_tokens(reported, meter.used)
            out.extend(added)
            out.append(stamp)
            return start_response(status, out, exc_info)

        return wrapped

    def _reject(
        self,
        info: RequestInfo,
        exc: HTTPError,
        start_response: StartResponse,
        caller: Caller | None = None,
    ) -> Iterable[bytes]:
        decision = self.kit.reject(info, exc, caller)
        body = problem_bytes(decision)
        headers = [*PROBLEM_HEADERS, *decision.headers, ("Content-Length", str(len(body)))]
        headers.append((self._rid_header, info.request_id or ""))
        start_response(_status_line(decision.status), headers)
        return [body]


class _ClosingIterator:
    """Yield the app's body; on close, close it, reset the context and settle.

    The request failed (its reservation is released) unless the response started
    and its body was read to the end without an error: a server closes the
    iterable early when the client disconnects mid-body. A ``close()`` that
    raises after the end does not undo a delivered response (as on ASGI, where
    a task raising after the last body chunk does not).
    """

    def __init__(self, finish: Callable[[bool], None]) -> None:
        self._finish = finish
        self._result: Iterable[bytes] = ()
        self._iter: Iterator[bytes] = iter(())
        self._failed = False
        self._exhausted = False
        #: Set by the wrapped ``start_response`` (a generator app may call it lazily).
        self.started = False

    def wrap(self, result: Iterable[bytes]) -> _ClosingIterator:
        """Take the app's response iterable; ``iter()`` on it may raise."""
        self._result = result
        self._iter = iter(result)
        return self

    def __iter__(self) -> Iterator[bytes]:
        return self

    def __next__(self) -> bytes:
        try:
            return next(self._iter)
        except StopIteration:
            self._exhausted = True
            raise
        except BaseException:
            self._failed = True
            raise

    def close(self) -> None:
        try:
            close = getattr(self._result, "close", None)
            if close is not None:
                close()
        finally:
            self._finish(self._failed or not self._exhausted or not self.started)


def _environ_key(header: str) -> str:
    return "HTTP_" + header.upper().replace("-", "_")


def _request_info(environ: WSGIEnvironment, request_id: str) -> RequestInfo:
    headers: dict[str, str] = {}
    for key, value in environ.items():
        if key.startswith("HTTP_"):
            headers[key[5:].replace("_", "-").lower()] = value
    for key in ("CONTENT_TYPE", "CONTENT_LENGTH"):
        if environ.get(key):
            headers[key.replace("_", "-").lower()] = environ[key]
    raw_path: str = environ.get("PATH_INFO", "") or "/"
    try:
        path = raw_path.encode("latin-1").decode("utf-8", "replace")
    except UnicodeEncodeError:  # a server that passed decoded text, against PEP 3333
        path = raw_path
    return RequestInfo(
        method=environ.get("REQUEST_METHOD", "GET"),
        path=path,
        headers=headers,
        client=environ.get("REMOTE_ADDR"),
        scheme=environ.get("wsgi.url_scheme", "http"),
        query_string=environ.get("QUERY_STRING", ""),
        request_id=request_id,
    )


def _read_body(environ: WSGIEnvironment, limit: int) -> bytes:
    """Read the body once (at most ``limit`` bytes) and put a replayable copy back.

    Never past CONTENT_LENGTH (PEP 3333): wsgi.input may be the socket itself
    (werkzeug's server), where such a read blocks until the client gives up.
    Without a length the body is read to its end only from a stream the server
    marks ``wsgi.input_terminated`` (a dechunked body), else it is empty. A
    length that is no decimal number is a 400: where the body ends is unknown
    (RFC 9112, section 6.3; an ASGI server refuses such a request itself). So is a
    body the client stopped sending (a socket error while reading it).
    """
    declared: str = environ.get("CONTENT_LENGTH") or ""
    stream = environ["wsgi.input"]
    try:
        if declared:
            length = content_length(declared)
            if length is None:
                raise BadRequest("the Content-Length header is not a decimal number")
            if length > limit:
                raise PayloadTooLarge(f"the body exceeds {limit} bytes", limit=limit)
            body: bytes = stream.read(length)
        elif environ.get("wsgi.input_terminated"):
            body = _read_to_end(stream, limit)
        else:
            body = b""
    except (OSError, ValueError) as exc:  # the client went away mid-body (a closed socket)
        # A 400, as werkzeug's ClientDisconnected: not an exception the server turns into a 500.
        raise BadRequest("the request body could not be read: the client disconnected") from exc
    environ["wsgi.input"] = io.BytesIO(body)
    environ["CONTENT_LENGTH"] = str(len(body))
    return body


def _read_to_end(stream: InputStream, limit: int) -> bytes:
    """Read a terminated stream to its end, or raise ``PayloadTooLarge`` past ``limit``."""
    chunks: list[bytes] = []
    size = 0
    while True:
        chunk: bytes = stream.read(limit + 1 - size)  # a read may return less than asked
        if not chunk:
            return b"".join(chunks)
        chunks.append(chunk)
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge(f"the body exceeds {limit} bytes", limit=limit)


def _status_code(status: str) -> int | None:
    code = status[:3]
    return int(code) if len(code) == 3 and code.isascii() and code.isdigit() else None


def _status_line(status: int) -> str:
    try:
        return f"{status} {HTTPStatus(status).phrase}"
    except ValueError:
        return f"{status} Error"
