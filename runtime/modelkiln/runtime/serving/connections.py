"""Per-connection limits uvicorn's httptools protocol does not enforce, added by a small subclass.

uvicorn with httptools has a keep-alive timeout (armed only after a first response) and a
concurrency limit (a text 503 without Retry-After, counting idle connections), and nothing else:
no deadline for the request head, no cap on its size (httptools buffers a header of any length
before calling back), nothing for a connection that never sends a request. This subclass adds:

- an idle timeout from the moment a connection opens, not only between requests (closed quietly:
  no request was begun);
- a deadline for the whole request head from its first byte (408, then close), so a client
  that trickles header bytes cannot hold a connection;
- a cap on the head's bytes (431, then close), enforced before httptools buffers past it;
- a cap on open connections: a request on a connection past it is answered 503 with
  Retry-After, and the connection closed.

The body's deadline is kept by the application (`HttpApp`), which reads the body.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass

import orjson
from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol

log = logging.getLogger(__name__)

LINGER_SECONDS = 5.0  # how long a refused connection is read (and ignored) before it is closed


@dataclass(frozen=True)
class ConnectionLimits:
    idle_timeout: float  # seconds without a request begun, from connect and between requests
    header_timeout: float  # seconds for a whole request head, from its first byte
    max_header_bytes: int  # request line and headers together
    max_connections: int


def raw_error(status: int, message: str, *extra: tuple[bytes, bytes]) -> bytes:
    """A whole HTTP/1.1 error response that closes the connection, JSON like the app's errors."""
    body = orjson.dumps({"error": message})
    lines = [STATUS_LINE[status], b"content-type: application/json\r\n",
             b"content-length: %d\r\n" % len(body), b"connection: close\r\n"]
    lines.extend(b"%s: %s\r\n" % header for header in extra)
    return b"".join(lines) + b"\r\n" + body


class LimitedHttpToolsProtocol(HttpToolsProtocol):
    def __init__(self, *args, limits: ConnectionLimits, over_capacity_app, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.limits = limits
        self.over_capacity_app = over_capacity_app
        self.in_head = True  # between requests or reading a request line and headers
        self.head_budget = limits.max_header_bytes
        self.head_timer: asyncio.TimerHandle | None = None
        self.heads_read = 0
        self.discarding = False  # refused: read what the client still sends, until it closes

    def connection_made(self, transport) -> None:
        super().connection_made(transport)
        if len(self.connections) > self.limits.max_connections:
            # read the request first (bounded by the limits below) so the client sees the 503
            self.app = self.over_capacity_app
        # uvicorn's keep-alive timer: cancelled by the first byte, re-armed after each response
        self.timeout_keep_alive_task = self.loop.call_later(self.timeout_keep_alive,
                                                            self.timeout_keep_alive_handler)

    def connection_lost(self, exc) -> None:
        self._stop_head_timer()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self.discarding:
            return
        if not self.in_head:
            super().data_received(data)
            return
        if self.head_timer is None:
            self.head_timer = self.loop.call_later(self.limits.header_timeout, self._head_too_slow)
        if len(data) <= self.head_budget:
            self.head_budget -= len(data)
            super().data_received(data)
            return
        # feed only what the cap allows: if the head has not ended within it, refuse the request
        view, fit, heads_before = memoryview(data), self.head_budget, self.heads_read
        super().data_received(view[:fit])
        if self.transport.is_closing():  # a malformed request: uvicorn has answered 400
            return
        if self.heads_read == heads_before:
            self._refuse(431, f"request line and headers are over the limit of "
                              f"{self.limits.max_header_bytes} bytes")
        else:
            super().data_received(view[fit:])

    def on_headers_complete(self) -> None:
        self.in_head = False
        self.heads_read += 1
        self._stop_head_timer()
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        super().on_message_complete()
        self.in_head = True
        self.head_budget = self.limits.max_header_bytes

    def _head_too_slow(self) -> None:
        self.head_timer = None
        if self.in_head and not self.transport.is_closing():
            self._refuse(408, f"request line and headers not received within "
                              f"{self.limits.header_timeout:g} s")

    def _stop_head_timer(self) -> None:
        if self.head_timer is not None:
            self.head_timer.cancel()
            self.head_timer = None

    def _refuse(self, status: int, message: str) -> None:
        log.warning("%s from %s: %s", status, self.client and self.client[0], message)
        self._stop_head_timer()
        self.transport.write(raw_error(status, message))
        # close gently (what nginx calls a lingering close): closing with the client's bytes
        # still unread sends a reset, which can discard this answer before the client reads it
        self.discarding = True
        if self.transport.can_write_eof():
            self.transport.write_eof()
        self.loop.call_later(LINGER_SECONDS, self.transport.close)
