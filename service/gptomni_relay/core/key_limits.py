"""Per-API-key limits (a GPTOmniAPIKey's `limits`): requests per minute, requests in
progress at once, tokens per UTC day. The policy is written once, here; where the counts
live is a `KeyCounts` (in this process, or in the shared store: key_limits_store.py).

- **requests per minute**: a sliding window of the last 60 s (every admitted request is
  one entry; a refused one is not counted), so there is no burst at a minute's edge;
- **concurrent streams**: requests admitted and not yet finished, streamed or not;
- **tokens per day**: prompt + completion tokens (the relay's estimate) counted when a
  request ends; a key is refused once the day's count reaches its budget, so the request
  that crosses it finishes (its size is unknown when it starts), and the next is refused.
  The day is UTC's; the count starts again at midnight.

A refusal says which limit and when to come back; an admission says what is left, for
the `x-ratelimit-*` headers.
"""

from __future__ import annotations

import itertools
import math
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Protocol

from gptomni_common.api_key_set import KeyLimits
from gptomni_relay.core.errors import RelayError

WINDOW_SECONDS = 60.0
DAY_SECONDS = 86400


class LimitKind(StrEnum):
    REQUESTS = "requests"
    CONCURRENCY = "concurrency"
    TOKENS = "tokens"


class KeyLimitExceeded(RelayError):
    def __init__(self, kind: LimitKind, limit: int, retry_after: float, usage: Usage) -> None:
        what = {LimitKind.REQUESTS: f"{limit} requests per minute",
                LimitKind.CONCURRENCY: f"{limit} requests in progress at once",
                LimitKind.TOKENS: f"{limit} tokens per day"}[kind]
        super().__init__(f"this API key's limit of {what} is reached; retry in {math.ceil(retry_after)}s")
        self.kind, self.limit, self.retry_after, self.usage = kind, limit, retry_after, usage


@dataclass(frozen=True)
class Usage:
    """What a key has used of its limits, as a count source saw it at one moment."""

    requests_in_window: int = 0
    requests_reset_seconds: float = 0.0  # until the oldest request in the window leaves it
    tokens_today: int = 0
    seconds_to_midnight: float = 0.0


def day_number(now: float) -> int:
    return int(now // DAY_SECONDS)


def seconds_to_midnight(now: float) -> float:
    return (day_number(now) + 1) * DAY_SECONDS - now


@dataclass(frozen=True)
class Ticket:
    """An admitted request: `release` it when it ends, whichever way."""

    name: str
    limits: KeyLimits
    member: str  # its entry in the window and among those in progress
    usage: Usage  # as counted at admission, this request included


class KeyCounts(Protocol):
    """Where the counts live. `admit` decides and counts atomically; `release` ends a request."""

    async def admit(self, name: str, limits: KeyLimits, member: str) -> Usage: ...

    async def release(self, name: str, limits: KeyLimits, member: str, tokens: int) -> int: ...

    async def start(self) -> None: ...

    async def stop(self) -> None: ...


@dataclass
class _KeyState:
    window: deque[float] = field(default_factory=deque)
    in_progress: set[str] = field(default_factory=set)
    day: int = 0
    tokens: int = 0


class LocalCounts:
    """In this process: exact for one replica (the default without a shared store), and
    each replica's share while the shared store is out of reach."""

    def __init__(self, share: int = 1, clock: Callable[[], float] = time.time) -> None:
        self._share = share  # limits are divided by this (at least 1 left of each)
        self._clock = clock
        self._keys: dict[str, _KeyState] = {}

    def _divided(self, limit: int | None) -> int | None:
        return None if limit is None else max(1, limit // self._share)

    def _state(self, name: str, now: float) -> _KeyState:
        state = self._keys.setdefault(name, _KeyState(day=day_number(now)))
        if state.day != day_number(now):
            state.day, state.tokens = day_number(now), 0
        while state.window and state.window[0] <= now - WINDOW_SECONDS:
            state.window.popleft()
        return state

    def _usage(self, state: _KeyState, now: float) -> Usage:
        reset = state.window[0] + WINDOW_SECONDS - now if state.window else 0.0
        return Usage(len(state.window), reset, state.tokens, seconds_to_midnight(now))

    async def admit(self, name: str, limits: KeyLimits, member: str) -> Usage:
        now = self._clock()
        state = self._state(name, now)
        tokens_limit = self._divided(limits.tokens_per_day)
        if tokens_limit is not None and state.tokens >= tokens_limit:
            raise KeyLimitExceeded(LimitKind.TOKENS, limits.tokens_per_day or 0, seconds_to_midnight(now),
                                   self._usage(state, now))
        rpm = self._divided(limits.requests_per_minute)
        if rpm is not None and len(state.window) >= rpm:
            raise KeyLimitExceeded(LimitKind.REQUESTS, limits.requests_per_minute or 0,
                                   state.window[0] + WINDOW_SECONDS - now, self._usage(state, now))
        streams = self._divided(limits.max_concurrent_streams)
        if streams is not None and len(state.in_progress) >= streams:
            raise KeyLimitExceeded(LimitKind.CONCURRENCY, limits.max_concurrent_streams or 0, 1.0,
                                   self._usage(state, now))
        if rpm is not None:
            state.window.append(now)
        state.in_progress.add(member)
        return self._usage(state, now)

    async def release(self, name: str, limits: KeyLimits, member: str, tokens: int) -> int:
        now = self._clock()
        state = self._state(name, now)
        state.in_progress.discard(member)
        state.tokens += tokens
        return state.tokens

    def forget_all_but(self, names: set[str]) -> None:
        """Keys that left the configuration leave the counts (none is in progress any more)."""
        for name in [name for name, state in self._keys.items() if name not in names and not state.in_progress]:
            del self._keys[name]

    async def start(self) -> None:
        return None

    async def stop(self) -> None:
        return None


class KeyLimiter:
    """Admits requests of keys with limits against a `KeyCounts`."""

    def __init__(self, counts: KeyCounts, replica: str) -> None:
        self.counts = counts
        self._members = (f"{replica}:{n}" for n in itertools.count())

    async def admit(self, name: str, limits: KeyLimits) -> Ticket:
        member = next(self._members)
        usage = await self.counts.admit(name, limits, member)
        return Ticket(name, limits, member, usage)

    async def release(self, ticket: Ticket, tokens: int) -> int:
        """Ends the request and counts its tokens; the day's count after it."""
        return await self.counts.release(ticket.name, ticket.limits, ticket.member, tokens)

    async def start(self) -> None:
        await self.counts.start()

    async def stop(self) -> None:
        await self.counts.stop()


def has_limits(limits: KeyLimits | None) -> bool:
    return limits is not None and any(value is not None for value in (
        limits.requests_per_minute, limits.max_concurrent_streams, limits.tokens_per_day))
