"""Bounds on what one client connection may make the server hold, and for how long.

uvicorn's httptools protocol reads request headers without a size, count or time limit
(a 4 MB header line is buffered whole, a connection trickling a header every few seconds
stays open for minutes), and a request body may arrive as slowly as the client likes.
`GuardedHttpProtocol` is that protocol with the limits a server on the internet needs:

- request line and headers at most `max_header_bytes` together, and at most
  `max_header_count` headers: 431 beyond;
- what follows the headers (body, chunk framing, trailers) at most `max_body_bytes`
  plus `max_header_bytes`: 413 beyond (the app refuses large bodies itself; this bounds
  what the parser would otherwise buffer, chunked trailers above all);
- headers complete within `header_timeout` of their first byte (or of the connection,
  so a silent connection is closed too): 408 beyond;
- the whole body within `body_timeout` of the headers: 408 beyond;
- idle keep-alive connections are uvicorn's own `timeout_keep_alive`;
- one request at a time (back-pressure): while a request's answer is unfinished, what
  the client sends next is held unparsed and the connection is not read. uvicorn parses
  every request in a read and reads again after each answer, so 100,000 pipelined
  `GET /healthz` became 100,000 queued requests; here the parser is fed up to each blank
  line (where a request's headers end) and stops once a request waits for its turn.
  uvicorn resumes reading each time the app waits on `receive()` (the hang-up watch does,
  once per SSE ping), and each resume lets one more read in: once what is held passes
  `max_header_bytes`, the connection is read no more (what is held is dropped, later
  reads are dropped as they come) and closes after the answer being written, so a client
  pipelining megabytes during a long stream makes the server hold no more.

A request answered before its body was read (a wrong key, a full body budget) drops what
uvicorn had buffered of that body, and the rest as it comes, until the body is over or its
timeout closes the connection.

Memory per connection is thus at most `max_header_bytes` plus one read, whatever clients
send. Everything else (parsing, the ASGI cycle, keep-alive, streaming) stays uvicorn's.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from dataclasses import dataclass
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

log = logging.getLogger(__name__)

_REASONS = {408: b"Request Timeout", 413: b"Content Too Large", 431: b"Request Header Fields Too Large"}


@dataclass(frozen=True)
class HttpLimits:
    max_header_bytes: int = 32 * 1024
    max_header_count: int = 100
    max_body_bytes: int = 1024 * 1024
    header_timeout: float = 10.0
    body_timeout: float = 30.0


DEFAULT_LIMITS = HttpLimits()


class _Refused(Exception):
    """Raised from a parser callback to stop parsing a request that broke a limit."""


class GuardedHttpProtocol(HttpToolsProtocol):
    """Between a request's headers and the end of its body the body timeout applies;
    every other byte a client sends belongs to some request's line and headers."""

    def __init__(self, *args: Any, limits: HttpLimits, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._limits = limits
        self._body_pending = False
        self._header_bytes = 0  # bytes read while no body was pending
        self._parsed_header_bytes = 0  # the current request's line and headers, as parsed
        self._body_bytes = 0
        self._header_count = 0
        self._refusal: int | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._unparsed = b""  # what the client sent after a request still being answered
        self._deaf = False  # sent too much ahead: nothing more is read, closed after the answer

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm(self._limits.header_timeout)  # a connection that never speaks is closed too

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        self._unparsed = b""
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self.transport.is_closing():
            return  # refused already: nothing more is read
        if self._deaf:
            self.flow.pause_reading()  # uvicorn resumed reading: what it read is dropped
            return
        if self._unparsed:
            # uvicorn resumed reading (an app waiting for a hang-up does, once per wait):
            # keep the order and pause again, within the bound.
            if len(self._unparsed) + len(data) > self._limits.max_header_bytes:
                return self._stop_reading()
            self._hold(self._unparsed + data)
            return
        self._feed(memoryview(data))

    @property
    def held_bytes(self) -> int:
        """What the connection holds unparsed, waiting for an answer to finish."""
        return len(self._unparsed)

    def _stop_reading(self) -> None:
        """More than one request's headers sent ahead of an unfinished answer: no client
        pipelines that much, so nothing more is read and the connection ends after the answer
        being written (the requests sent ahead are never answered; HTTP lets a client retry them)."""
        self._unparsed = b""
        self._deaf = True
        self.flow.pause_reading()
        if self.cycle is not None:  # the last request parsed: the connection closes after its answer
            self.cycle.keep_alive = False
        log.warning("client sent too much ahead of an unfinished answer; closing after it",
                    extra={"client": _client(self.client)})

    def _feed(self, data: memoryview) -> None:
        """Parses `data` up to each blank line in turn, and holds the rest unparsed as soon as
        a complete request waits for its answer: only one request is ever queued."""
        start, size = 0, len(data)
        raw = data.obj
        while start < size:
            if self._waiting_for_answer():
                self._hold(bytes(data[start:]))
                return
            end = raw.find(b"\r\n\r\n", start)  # type: ignore[attr-defined]
            end = size if end < 0 else end + 4
            self._parse(data[start:end])
            if self.transport.is_closing():
                return
            start = end

    def _waiting_for_answer(self) -> bool:
        cycle = self.cycle
        return bool(self.pipeline) or (cycle is not None and not cycle.response_complete and not self._body_pending)

    def _hold(self, unparsed: bytes) -> None:
        self._unparsed = unparsed
        self.flow.pause_reading()

    def on_response_complete(self) -> None:
        cycle = self.cycle
        if self._body_pending and cycle is not None and cycle.response_complete:
            # Answered before its body was read (a wrong key, a full body budget): nobody will
            # read what uvicorn buffered of it (up to 64 KiB plus one read), and the rest is
            # dropped as it comes; without this it stayed until the body timeout (300 such
            # connections held +38 MB for 30 s).
            cycle.body = bytearray()
        super().on_response_complete()  # starts a queued request, resumes reading
        if self._body_pending and self._timer is None and not self.transport.is_closing():
            self._arm(self._limits.body_timeout)  # a queued request's body is timed from its turn
        if not self._unparsed or self.transport.is_closing():
            return
        unparsed, self._unparsed = self._unparsed, b""
        self._feed(memoryview(unparsed))

    def _parse(self, data: memoryview) -> None:
        if self._body_pending:
            self._body_bytes += len(data)
            if self._body_bytes > self._limits.max_body_bytes + self._limits.max_header_bytes:
                return self._refuse(413)
        else:
            if self._timer is None:  # the first byte of a request on a kept-alive connection
                self._arm(self._limits.header_timeout)
            self._header_bytes += len(data)
        super().data_received(data)
        # The parser holds at most the limit plus the read that crossed it.
        if not self._body_pending and self._header_bytes > self._limits.max_header_bytes:
            self._refuse(431)

    def send_400_response(self, msg: str) -> None:
        # The parser stops with an error when one of our callbacks refused the request.
        if self._refusal is not None:
            return self._refuse(self._refusal)
        super().send_400_response(msg)

    def on_message_begin(self) -> None:
        # A request that arrived in the same read as the end of the one before is timed too.
        if self._timer is None:
            self._arm(self._limits.header_timeout)
        self._parsed_header_bytes = 0
        self._header_count = 0
        super().on_message_begin()

    def on_url(self, url: bytes) -> None:
        self._count_parsed(len(url))
        super().on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._header_count += 1
        if self._header_count > self._limits.max_header_count:
            self._refusal = 431
            raise _Refused
        self._count_parsed(len(name) + len(value) + 4)  # ": " and CRLF
        super().on_header(name, value)

    def _count_parsed(self, size: int) -> None:
        """Headers that arrived in one read with their end are measured here, as parsed."""
        self._parsed_header_bytes += size
        if self._parsed_header_bytes > self._limits.max_header_bytes:
            self._refusal = 431
            raise _Refused

    def on_headers_complete(self) -> None:
        self._body_pending = True
        self._header_bytes = 0
        self._parsed_header_bytes = 0
        self._body_bytes = 0
        self._arm(self._limits.body_timeout)
        super().on_headers_complete()
        if self.pipeline:  # queued behind an unfinished answer: its body is not read before its turn
            self._disarm()

    def on_message_complete(self) -> None:
        self._body_pending = False
        self._disarm()
        super().on_message_complete()

    def _arm(self, seconds: float) -> None:
        self._disarm()
        self._timer = self.loop.call_later(seconds, self._expired)

    def _disarm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _expired(self) -> None:
        self._timer = None
        if self.transport.is_closing():
            return
        answered = self.cycle is not None and self.cycle.response_complete
        idle = not self._body_pending and self._header_bytes == 0 and self._parsed_header_bytes == 0
        if idle or (self._body_pending and answered):
            # An idle connection, or a body nobody waits for any more: nothing to answer.
            self.transport.close()
            return
        log.warning("client too slow; connection closed", extra={
            "phase": "body" if self._body_pending else "headers", "client": _client(self.client)})
        self._refuse(408)

    def _refuse(self, status: int) -> None:
        self._disarm()
        if self.transport.is_closing():
            return
        if self.cycle is not None:
            self.cycle.keep_alive = False
        # A status line may go out only where no answer is: not after this request's own
        # answer began, nor inside an earlier request's answer (or one queued, pipelined).
        cycle = self.cycle
        if self._body_pending:
            busy = cycle is not None and cycle.response_started
        else:
            busy = cycle is not None and not cycle.response_complete
        if busy or self.pipeline:
            self.transport.close()
            return
        reason = _REASONS[status]
        self.transport.write(
            b"HTTP/1.1 %d %s\r\ncontent-type: text/plain; charset=utf-8\r\ncontent-length: %d\r\n"
            b"connection: close\r\n\r\n%s" % (status, reason, len(reason), reason)
        )
        self.transport.close()


def _client(address: tuple[str, int] | None) -> str | None:
    return f"{address[0]}:{address[1]}" if address else None


def guarded_protocol(limits: HttpLimits) -> Any:
    """What uvicorn's `http=` setting takes: a protocol factory with these limits."""
    return functools.partial(GuardedHttpProtocol, limits=limits)
