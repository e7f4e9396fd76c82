"""Server-sent events for streamed completions: the relay's per-piece hot path.

A streamed answer costs one socket write per piece, so everything else done per piece
shows up directly in latency under load. sse-starlette was measured on that path (a
task group, a cancel scope and a lock around every send, ~20 KB per stream) and
replaced by this writer, which does the three things the relay needs:

- frames pre-encoded events (`data: ...\\n\\n`) and writes them;
- notices a client hang-up while the answer is idle (edge/hang_up.py: one helper task that
  waits on `receive()` and cancels the stream), so the upstream request is closed at
  once instead of at the next piece;
- sends `: ping` comments while the upstream is silent, so proxies with idle timeouts
  keep the connection open.

Graceful shutdown is uvicorn's: open streams run on until its grace period ends.

Body pieces go to the server's own `send` when the app left it in the scope
(edge/raw_send.py), skipping the middleware chain's per-message wrappers.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, Awaitable, Callable, Mapping

from pydantic import BaseModel
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from gptomni_relay.edge.hang_up import HangUpWatch
from gptomni_relay.edge.raw_send import server_send, transport_closed

PING = b": ping\n\n"


def sse_data(payload: bytes) -> bytes:
    return b"data: " + payload + b"\n\n"


def sse_event(model: BaseModel, exclude: set[str] | None = None) -> bytes:
    return sse_data(model.model_dump_json(exclude=exclude).encode())


class StreamEnd(bytes):
    """The events that end a stream (the closing chunk, usage, `[DONE]`, or an error),
    yielded last and written together with the end of the response: one socket write
    instead of one per event plus one for the end."""


class EventStreamResponse(Response):
    media_type = "text/event-stream"

    def __init__(self, events: AsyncGenerator[bytes, None], *, ping_seconds: float, write_timeout: float,
                 on_close: Callable[[], Awaitable[None]], headers: Mapping[str, str] | None = None) -> None:
        self.events = events
        self.ping_seconds = ping_seconds
        self.write_timeout = write_timeout
        self.on_close = on_close
        self.status_code = 200
        self.background = None
        # No Content-Length: init_headers adds one only when a body is set.
        self.init_headers({"cache-control": "no-cache", "x-accel-buffering": "no", **(headers or {})})
        self._last_write = 0.0
        self._write_since = 0.0
        self._write_lock = asyncio.Lock()
        self._transport_closed: Callable[[], bool] = lambda: False

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        loop = asyncio.get_running_loop()
        write_piece = server_send(scope, send)
        self._transport_closed = transport_closed(scope)
        # The watch also wakes often enough to notice a client that stopped reading.
        idle = min(seconds for seconds in (self.ping_seconds, self.write_timeout / 2) if seconds > 0)
        try:
            async with HangUpWatch(receive, idle, lambda: self._ping(send)) as watch:
                await send({"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers})
                last = b""
                async for event in self.events:
                    if type(event) is StreamEnd:
                        last = event  # the generator ends right after it, running its clean-up
                        continue
                    async with self._write_lock:
                        self._write_since = loop.time()
                        await write_piece({"type": "http.response.body", "body": event, "more_body": True})
                    self._last_write = loop.time()
                async with self._write_lock:
                    watch.stop()
                    await send({"type": "http.response.body", "body": bytes(last), "more_body": False})
        except OSError:
            return  # the socket died under a write: the same as a hang-up
        except RuntimeError:
            if not self._transport_closed():
                raise
            return  # a write into the transport a failed write closed (uvloop): a hang-up too
        finally:
            # Runs the generator's own clean-up even when the cancellation landed in a
            # write rather than inside the generator; `on_close` runs even if the generator
            # never started (a hang-up while the response start was being written).
            try:
                await self.events.aclose()
            finally:
                await self.on_close()

    async def _ping(self, send: Send) -> None:
        """Runs while the stream is idle: a ping when one is due, and the check that the
        client still takes what is written (a stalled write ends the stream as a hang-up)."""
        loop = asyncio.get_running_loop()
        if self._write_lock.locked():
            if loop.time() - self._write_since > self.write_timeout:
                raise ClientNotReading
            return
        if not self.ping_seconds or loop.time() - self._last_write < self.ping_seconds:
            return
        async with self._write_lock:
            self._write_since = loop.time()
            try:
                async with asyncio.timeout(self.write_timeout):
                    await send({"type": "http.response.body", "body": PING, "more_body": True})
            except TimeoutError:
                raise ClientNotReading from None
            except RuntimeError:
                if not self._transport_closed():
                    raise
                raise ConnectionResetError("the client hung up") from None  # as in __call__
        self._last_write = loop.time()


class ClientNotReading(OSError):
    """The client has not taken a write for GPTOMNI_CLIENT_WRITE_TIMEOUT_SECONDS: treated as gone."""
