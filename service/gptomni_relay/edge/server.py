"""Run an ASGI app under uvicorn on a socket bound up front, inside the current event loop.

Binding first gives a usable port number (port 0 picks a free one) before the server
starts; demo mode uses it for the embedded simulator, tests and benchmarks for both sides.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import logging
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import uvicorn

from gptomni_relay.edge.http_guard import DEFAULT_LIMITS, HttpLimits, guarded_protocol


@dataclass(frozen=True)
class RunningServer:
    host: str
    port: int
    server: uvicorn.Server

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"


class EmbeddedServer(uvicorn.Server):
    """A uvicorn server that leaves signal handling to its host process."""

    def capture_signals(self) -> contextlib.AbstractContextManager[None]:
        return contextlib.nullcontext()


# Set inside the task of a server started with `serve_app(quiet=True)`: the demo's
# embedded simulator, whose uvicorn start-up lines would read as the relay's own twice.
_QUIET_SERVER = contextvars.ContextVar("gptomni_quiet_server", default=False)


class _QuietServerFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not (_QUIET_SERVER.get() and record.levelno < logging.WARNING)


logging.getLogger("uvicorn.error").addFilter(_QuietServerFilter())


def bind_socket(host: str, port: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(2048)
    sock.setblocking(False)
    return sock


def uvicorn_config(app: Any, limits: HttpLimits = DEFAULT_LIMITS, **overrides: Any) -> uvicorn.Config:
    # No `server: uvicorn` banner: nothing tells a scanner what to try.
    options: dict[str, Any] = {"log_config": None, "access_log": False, "lifespan": "on", "backlog": 2048,
                               "server_header": False, "http": guarded_protocol(limits)}
    options.update(overrides)
    return uvicorn.Config(app, **options)


def main_server(app: Any, limits: HttpLimits = DEFAULT_LIMITS, **overrides: Any) -> uvicorn.Server:
    """The process's own server: uvicorn's, with its signal handling (graceful shutdown)."""
    return uvicorn.Server(uvicorn_config(app, limits, **overrides))


@asynccontextmanager
async def serve_app(app: Any, host: str = "127.0.0.1", port: int = 0, *, sock: socket.socket | None = None,
                    quiet: bool = False, limits: HttpLimits = DEFAULT_LIMITS,
                    **overrides: Any) -> AsyncIterator[RunningServer]:
    """Serves `app` in a task of the running loop, on `sock` if given (else one bound to
    host:port); `quiet` keeps its start-up lines out of the log."""
    sock = sock or bind_socket(host, port)
    server = EmbeddedServer(uvicorn_config(app, limits, **overrides))
    token = _QUIET_SERVER.set(quiet)
    try:
        task = asyncio.create_task(server.serve(sockets=[sock]))
    finally:
        _QUIET_SERVER.reset(token)
    try:
        while not server.started:
            if task.done():
                task.result()  # surfaces the start-up error
                raise RuntimeError("server stopped before it started")
            await asyncio.sleep(0.005)
        yield RunningServer(sock.getsockname()[0], sock.getsockname()[1], server)
    finally:
        server.should_exit = True
        await task
        sock.close()
