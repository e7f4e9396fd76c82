"""One process-wide budget of bytes that request bodies being read may hold at once.

The per-request body limit bounds one request; nothing bounded them all: 300 connections
each sending a 1 MiB body and then stalling held 300 MiB until the body timeout. Every
body is read under a `Hold` on the relay's one `ByteBudget` (state.py): the hold grows
chunk by chunk as the body comes (what arrived, not what a Content-Length announces: an
announcement costs a client nothing to send), and gives everything back when its block
ends (parsed, refused, or the client gone). A hold the budget cannot cover raises
`ServerBusy` (503, retry shortly) and takes nothing.
"""

from __future__ import annotations

from types import TracebackType

from gptomni_relay.core.errors import ServerBusy


class ByteBudget:
    """At most `capacity` bytes held at once, by every hold together. Single-threaded:
    the event loop is the only caller, so no lock is needed."""

    def __init__(self, capacity: int) -> None:
        if capacity < 1:
            raise ValueError("a byte budget needs a capacity of at least 1 byte")
        self.capacity = capacity
        self.reserved = 0

    def hold(self) -> Hold:
        """An empty hold on this budget, for one body: use it in a `with` block."""
        return Hold(self)

    def _take(self, size: int) -> None:
        if self.reserved + size > self.capacity:
            raise ServerBusy(f"the relay is reading as many request bodies as it may hold ({self.capacity} bytes)")
        self.reserved += size

    def _give_back(self, size: int) -> None:
        self.reserved -= size


class Hold:
    """What one body holds of the budget; all of it is given back when the `with` block ends."""

    def __init__(self, budget: ByteBudget) -> None:
        self._budget = budget
        self.held = 0

    def cover(self, size: int) -> None:
        """Hold at least `size` bytes in all; `ServerBusy` (and nothing more held) if the budget cannot."""
        if size > self.held:
            self._budget._take(size - self.held)
            self.held = size

    def release(self) -> None:
        self._budget._give_back(self.held)
        self.held = 0

    def __enter__(self) -> Hold:
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 traceback: TracebackType | None) -> None:
        self.release()
