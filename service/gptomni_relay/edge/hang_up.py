"""Ending a request's work as soon as its client hangs up, even while nothing is written.

uvicorn reports a hang-up only through `receive()`, and Starlette cancels nothing for an
ordinary handler; a streamed response would notice only at its next write. Without this,
a client that gives up keeps an upstream answer, and a credential's slot, busy to the end.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from types import TracebackType

from starlette.types import Message, Receive


class HangUpWatch:
    """`async with HangUpWatch(receive):` cancels the enclosed work when the client
    disconnects and ends the block quietly; any other cancellation propagates as usual.

    `on_idle` runs every `idle_seconds` while the client is connected (SSE pings).
    """

    def __init__(self, receive: Receive, idle_seconds: float = 0.0,
                 on_idle: Callable[[], Awaitable[None]] | None = None) -> None:
        self._receive = receive
        self._idle_seconds = idle_seconds if on_idle is not None else 0.0
        self._on_idle = on_idle
        self.hung_up = False

    async def __aenter__(self) -> HangUpWatch:
        task = asyncio.current_task()
        assert task is not None
        self._task = task
        self._watcher: asyncio.Task[None] | None = asyncio.get_running_loop().create_task(self._watch())
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        traceback: TracebackType | None) -> bool:
        self.stop()
        return exc_type is asyncio.CancelledError and self.hung_up and self._task.uncancel() == 0

    def stop(self) -> None:
        """No more idle callbacks or hang-up cancellation (before the final write)."""
        if self._watcher is not None:
            self._watcher.cancel()
            # The cancelled watcher keeps its CancelledError, whose traceback holds this
            # object: holding the watcher in return would make a cycle, and with it the
            # whole finished request would wait for the garbage collector (tests/test_no_cycles.py).
            self._watcher = None

    async def _watch(self) -> None:
        while True:
            try:
                async with asyncio.timeout(self._idle_seconds or None):
                    message: Message = await self._receive()
            except TimeoutError:
                assert self._on_idle is not None
                try:
                    await self._on_idle()
                    continue
                except OSError:  # the socket died under the write
                    message = {"type": "http.disconnect"}
            if message["type"] == "http.disconnect":
                self.hung_up = True
                self._task.cancel()
                return
