"""What failover reports about its upstream attempts, to whoever watches them.

Failover decides; metrics and tracing only watch. They implement these protocols outside
`core` (metrics.py, tracing.py), so core depends on neither Prometheus nor OpenTelemetry,
and a test can watch failover with a recording observer.

Per request: `slot_waited` after each wait for a credential slot, `failed_over` before
each attempt after the first. Per attempt (`attempt()`): optionally `running()` around
the call to GPT-Omni, then `first_piece` once its first text arrived, then at most one
of `succeeded` / `failed`, then always `closed` last.
"""

from __future__ import annotations

from contextlib import AbstractContextManager, ExitStack, nullcontext
from typing import Protocol

from gptomni_common.upstream import UpstreamError


class AttemptObserver(Protocol):
    """One upstream attempt on one credential."""

    def running(self) -> AbstractContextManager[object]:
        """Held around the call to GPT-Omni (tracing makes the attempt the current span)."""
        ...

    def first_piece(self, after_seconds: float) -> None:
        """The first piece of text arrived this long after the attempt started."""
        ...

    def succeeded(self) -> None:
        """The answer ran to its end."""
        ...

    def failed(self, error: UpstreamError, *, answer_started: bool) -> None:
        """GPT-Omni failed the attempt, before its first piece or (`answer_started`) after."""
        ...

    def closed(self) -> None:
        """The attempt is over, whichever way it ended (also after a hang-up or a bound)."""
        ...


class FailoverObserver(Protocol):
    def slot_waited(self, seconds: float) -> None:
        """A request waited this long for a credential slot (whether it got one or not)."""
        ...

    def failed_over(self) -> None:
        """A request starts another attempt, on another credential."""
        ...

    def attempt(self, credential_id: str, attempt: int) -> AttemptObserver:
        """Attempt number `attempt` (from 1) of a request starts on this credential."""
        ...


class _Unwatched:
    def running(self) -> AbstractContextManager[object]:
        return nullcontext()

    def first_piece(self, after_seconds: float) -> None:
        pass

    def succeeded(self) -> None:
        pass

    def failed(self, error: UpstreamError, *, answer_started: bool) -> None:
        pass

    def closed(self) -> None:
        pass

    def slot_waited(self, seconds: float) -> None:
        pass

    def failed_over(self) -> None:
        pass

    def attempt(self, credential_id: str, attempt: int) -> AttemptObserver:
        return self


UNWATCHED = _Unwatched()  # nobody watching: every report is dropped


class _BothAttempts:
    def __init__(self, first: AttemptObserver, second: AttemptObserver) -> None:
        self._first = first
        self._second = second

    def running(self) -> AbstractContextManager[object]:
        stack = ExitStack()
        stack.enter_context(self._first.running())
        stack.enter_context(self._second.running())
        return stack

    def first_piece(self, after_seconds: float) -> None:
        self._first.first_piece(after_seconds)
        self._second.first_piece(after_seconds)

    def succeeded(self) -> None:
        self._first.succeeded()
        self._second.succeeded()

    def failed(self, error: UpstreamError, *, answer_started: bool) -> None:
        self._first.failed(error, answer_started=answer_started)
        self._second.failed(error, answer_started=answer_started)

    def closed(self) -> None:
        try:
            self._first.closed()
        finally:
            self._second.closed()


class BothObservers:
    """Reports every event to two observers, in order (the relay's metrics and its tracing)."""

    def __init__(self, first: FailoverObserver, second: FailoverObserver) -> None:
        self._first = first
        self._second = second

    def slot_waited(self, seconds: float) -> None:
        self._first.slot_waited(seconds)
        self._second.slot_waited(seconds)

    def failed_over(self) -> None:
        self._first.failed_over()
        self._second.failed_over()

    def attempt(self, credential_id: str, attempt: int) -> AttemptObserver:
        return _BothAttempts(self._first.attempt(credential_id, attempt), self._second.attempt(credential_id, attempt))
