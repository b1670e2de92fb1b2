"""The HTTP server's core: a lean ASGI application with a route table computed at import.

No web framework sits on the hot path: the request line is matched against a few compiled
regexes, the body is read with a size limit (413 as soon as the limit is passed, before the
rest is read), and the handler's `Response` is sent in two ASGI messages. Any `ServingError` a
handler raises becomes its status code and a JSON body `{"error": "..."}`; anything else is a
500 with a one-line message, and the traceback goes to the log only.
"""

from __future__ import annotations

import asyncio
import logging
import re
from dataclasses import dataclass
from typing import Awaitable, Callable

import orjson

from modelkiln.runtime.errors import (InvalidInput, PayloadTooLarge, RequestTimeout, ServerBusy,
                                     ServingError, one_line)
from modelkiln.runtime.names import shown
from modelkiln.runtime.serving.auth import OPEN_PATHS, TokenFile

log = logging.getLogger(__name__)

JSON = b"application/json"


@dataclass
class Request:
    method: str
    path: str
    headers: dict[bytes, bytes]  # lower-cased names; the last value wins
    body: bytes | bytearray = b""

    def header(self, name: bytes) -> bytes | None:
        return self.headers.get(name)


@dataclass
class Response:
    status: int
    body: bytes
    content_type: bytes = JSON
    extra_headers: tuple[tuple[bytes, bytes], ...] = ()


def json_response(document, status: int = 200) -> Response:
    # numpy arrays in the document are written by orjson directly, without .tolist()
    return Response(status, orjson.dumps(document, option=orjson.OPT_SERIALIZE_NUMPY))


def readiness_response(ready: bool) -> Response:
    """200 when ready, 503 when not: what Kubernetes probes and load balancers act on."""
    return json_response({"ready": ready}, 200 if ready else 503)


def error_response(status: int, message: str) -> Response:
    return json_response({"error": message}, status)


Handler = Callable[..., Awaitable[Response]]


class Router:
    """Routes are `(method, pattern, handler)`; named groups become keyword arguments."""

    def __init__(self) -> None:
        self._routes: list[tuple[str, re.Pattern, Handler]] = []

    def add(self, method: str, pattern: str, handler: Handler) -> None:
        self._routes.append((method, re.compile(pattern + r"\Z"), handler))

    def match(self, method: str, path: str) -> tuple[Handler, dict[str, str]]:
        allowed = []
        for route_method, pattern, handler in self._routes:
            found = pattern.match(path)
            if found is None:
                continue
            if route_method == method or (route_method == "GET" and method == "HEAD"):
                return handler, found.groupdict()
            allowed.append(route_method)
        if allowed:
            raise MethodNotAllowed(f"{method} is not allowed on {shown(path)}; use "
                                   f"{' or '.join(sorted(set(allowed)))}")
        raise RouteNotFound(f"no route for {method} {shown(path)}")


class RouteNotFound(ServingError):
    http_status = 404
    log_level = logging.WARNING


class MethodNotAllowed(ServingError):
    http_status = 405
    log_level = logging.WARNING


class HttpApp:
    """The ASGI application: reads the request, calls the routed handler, sends the response.

    At most `max_in_flight` requests are handled at once; one past that is answered 503 with
    Retry-After at once, before its body is read (probes, health and metrics, are always
    answered). The body must arrive within `body_timeout`
    seconds of the head (408 and close past it). With `tokens`, every route but the open ones
    (health, model readiness, metrics) needs a bearer token the file holds (401 without it).
    """

    def __init__(self, *, router: Router, max_request_bytes: int, body_timeout: float,
                 max_in_flight: int, tokens: TokenFile | None = None) -> None:
        self.router = router
        self.max_request_bytes = max_request_bytes
        self.body_timeout = body_timeout
        self.max_in_flight = max_in_flight
        self.tokens = tokens
        self.in_flight = 0

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return  # lifespan: nothing to set up, the server owns the models
        # probes are not turned away: a busy server is alive, and a liveness failure would kill it
        if self.in_flight >= self.max_in_flight and not OPEN_PATHS.match(scope["path"]):
            await self._send(scope, send, self._failure(scope, ServerBusy(
                f"server busy: {self.max_in_flight} requests in flight, the limit; "
                f"retry after 1 s")))
            return
        self.in_flight += 1
        try:
            response = await self._respond(scope, receive)
        finally:
            self.in_flight -= 1
        await self._send(scope, send, response)

    async def over_capacity(self, scope, receive, send) -> None:
        """The application for a connection past the server's cap: 503 (probes get their answer),
        and the server closes."""
        if OPEN_PATHS.match(scope["path"]):
            response = await self._respond(scope, receive)
        else:
            response = self._failure(scope, ServerBusy("server busy: too many open connections; "
                                                       "retry after 1 s"))
        response.extra_headers += ((b"connection", b"close"),)
        await self._send(scope, send, response)

    async def _respond(self, scope, receive) -> Response:
        try:
            handler, params = self.router.match(scope["method"], scope["path"])
            request = Request(scope["method"], scope["path"], dict(scope["headers"]))
            if self.tokens is not None and not OPEN_PATHS.match(request.path):
                self.tokens.check(request.header(b"authorization"))
            if scope["method"] == "POST":
                request.body = await self._read_body(request, receive)
            return await handler(request, **params)
        except ServingError as error:
            return self._failure(scope, error)
        except Exception as error:
            log.exception("%s %s failed", scope["method"], shown(scope["path"]))
            return error_response(500, f"internal error: {one_line(error)}")

    @staticmethod
    def _failure(scope, error: ServingError) -> Response:
        log.log(error.log_level, "%s %s: %s", scope["method"], shown(scope["path"]),
                error.message)
        response = error_response(error.http_status, error.message)
        response.extra_headers = error.http_headers
        return response

    @staticmethod
    async def _send(scope, send, response: Response) -> None:
        headers = [(b"content-type", response.content_type),
                   (b"content-length", str(len(response.body)).encode())]
        headers.extend(response.extra_headers)
        await send({"type": "http.response.start", "status": response.status,
                    "headers": headers})
        await send({"type": "http.response.body",
                    "body": b"" if scope["method"] == "HEAD" else response.body})

    async def _read_body(self, request: Request, receive) -> bytes | bytearray:
        limit = self.max_request_bytes
        declared = request.header(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            raise PayloadTooLarge(f"request body of {int(declared)} bytes is over the limit of "
                                  f"{limit} bytes")
        # A body in several chunks, of known size, is read into one buffer: no second copy when
        # the last chunk comes, and writable, so OpenVINO shares a binary tensor's bytes as they
        # are. One chunk (most small requests) is used as it came.
        size_known = declared is not None and declared.isdigit()
        body = None
        chunks = []
        size = 0
        try:
            async with asyncio.timeout(self.body_timeout):
                while True:
                    message = await receive()
                    if message["type"] == "http.disconnect":
                        raise InvalidInput("client disconnected before sending the whole body")
                    chunk = message.get("body", b"")
                    more = message.get("more_body", False)
                    if body is None and more and size_known and not chunks:
                        body = bytearray(int(declared))
                    if body is not None and size + len(chunk) <= len(body):
                        body[size:size + len(chunk)] = chunk
                    else:
                        chunks.append(chunk)
                    size += len(chunk)
                    if size > limit:
                        raise PayloadTooLarge(f"request body is over the limit of {limit} bytes")
                    if not more:
                        break
        except TimeoutError:
            raise RequestTimeout(f"request body not received within {self.body_timeout:g} s "
                                 f"({size} bytes came)") from None
        if body is not None:  # the HTTP parser ends a body at its Content-Length; never trust it blindly
            if chunks or size != len(body):
                raise InvalidInput(f"request body of {size} bytes, but Content-Length says {len(body)}")
            return body
        return chunks[0] if len(chunks) == 1 else b"".join(chunks)
