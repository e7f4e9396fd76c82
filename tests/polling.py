"""The one way tests wait for something: poll a condition until it holds, bounded in time.

A test that sleeps a fixed time to let something happen is either slow (the sleep is long)
or flaky on a busy machine (it is not): poll for the state itself instead, and where the
code takes a clock, give it a fake one (`FakeClock`) rather than waiting for real time.
"""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

T = TypeVar("T")


def _timed_out(what: str | None, timeout: float, last: object) -> AssertionError:
    return AssertionError(f"{what or 'condition'} not reached within {timeout} s; last value: {last!r}")


Errors = tuple[type[BaseException], ...]


def wait_until(probe: Callable[[], T], timeout: float = 10.0, step: float = 0.05, what: str | None = None,
               ignoring: Errors = ()) -> T:
    """The first truthy value of `probe()`, polled every `step` seconds; fails after `timeout`.
    An exception of the `ignoring` types counts as "not yet" (a server still starting)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            last: object = probe()
        except ignoring as error:
            last = error
        else:
            if last:
                return last  # type: ignore[return-value]
        if time.monotonic() > deadline:
            raise _timed_out(what, timeout, last)
        time.sleep(step)


async def eventually(probe: Callable[[], T | Awaitable[T]], timeout: float = 10.0, step: float = 0.05,
                     what: str | None = None, ignoring: Errors = ()) -> T:
    """`wait_until` for async tests: `probe` may be a coroutine function; the loop keeps running."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            last: object = probe()
            if inspect.isawaitable(last):
                last = await last
        except ignoring as error:
            last = error
        else:
            if last:
                return last  # type: ignore[return-value]
        if time.monotonic() > deadline:
            raise _timed_out(what, timeout, last)
        await asyncio.sleep(step)


class FakeClock:
    """A monotonic clock that moves only when told to (for code that takes `clock=`)."""

    def __init__(self, start: float = 1000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds
