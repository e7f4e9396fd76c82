"""Getting an answer to a prompt from GPT-Omni, failing over across credentials.

Until the first piece of text exists nothing has reached the client, so a refusal, a
timeout or an empty answer is retried on another credential, bounded in attempts and
time. A streamed answer is then committed to its credential: a later break reaches the
client as an error event. A whole (non-streamed) answer reaches the client only when it
is complete, so an answer that breaks midway is started again on another credential too.
A whole answer that arrived but is unusable for the client's request (`UnusableAnswer`
from the caller's `accept`: no valid tool call, JSON off its schema) is asked again on
the same attempt budget, on any credential, this one included (it did nothing wrong).

`Failover` takes every one of these decisions for one request; the HTTP layer renders
what it returns and maps the domain errors it raises (core/errors.py). It reports its
attempts to a `FailoverObserver` (core/attempt_observer.py), which metrics and tracing
implement outside core.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack
from dataclasses import dataclass
from typing import TypeVar

from gptomni_common.upstream import AnswerOverTime, Outcome, UpstreamClient, UpstreamError
from gptomni_relay.core.attempt_observer import UNWATCHED, AttemptObserver, FailoverObserver
from gptomni_relay.core.errors import (
    AllBusy,
    AnswerTookTooLong,
    AnswerTooLarge,
    NothingLeftToTry,
    PoolUnavailable,
    RelayError,
    UnusableAnswer,
    UpstreamFailed,
    UpstreamTimedOut,
)
from gptomni_relay.core.pool import Pool, PoolLease
from gptomni_relay.core.usage import TokenMeter

log = logging.getLogger(__name__)

T = TypeVar("T")


@dataclass(frozen=True)
class FailoverPolicy:
    max_attempts: int = 3
    budget_seconds: float = 30.0  # no new attempt after this long
    acquire_wait_seconds: float = 5.0  # for a free credential slot
    max_answer_chars: int = 4_000_000  # streamed or not: no answer goes on forever
    # (its time limit is the upstream client's: it holds while no text comes too)


def domain_error(exc: UpstreamError) -> UpstreamFailed:
    if exc.outcome is Outcome.TIMEOUT:
        return UpstreamTimedOut(exc.message)
    return UpstreamFailed(exc.message)


class UpstreamAnswer:
    """One credential's answer, its first piece in hand. Iterate `pieces()` once, then
    `aclose()`. Keeps no text: `completion` counts the tokens of what went by."""

    def __init__(self, lease: PoolLease, first_piece: str, rest: AsyncIterator[str], stack: AsyncExitStack,
                 observer: AttemptObserver, policy: FailoverPolicy) -> None:
        self.credential_id = lease.credential.id
        self.first_piece_at = time.monotonic()
        self._policy = policy
        self.completion = TokenMeter()
        self._lease = lease
        self._first = first_piece
        self._rest = rest
        self._stack = stack
        self._observer = observer
        self._closed = False

    async def pieces(self) -> AsyncIterator[str]:
        """The answer's text pieces; raises UpstreamFailed / UpstreamTimedOut if it breaks."""
        policy = self._policy
        self.completion.add(self._first)
        yield self._first
        try:
            async for piece in self._rest:
                self.completion.add(piece)
                # Both bounds (length here, time in the upstream client) end the answer as a
                # clean error; neither is the cookie's fault.
                if self.completion.characters > policy.max_answer_chars:
                    raise AnswerTooLarge(f"the answer is longer than the relay's {policy.max_answer_chars}-character limit")
                yield piece
        except AnswerOverTime as exc:
            raise AnswerTookTooLong(exc.message) from None
        except UpstreamError as exc:
            self._lease.report(exc.outcome, exc.retry_after)
            self._observer.failed(exc, answer_started=True)
            raise domain_error(exc) from None
        self._lease.report(Outcome.OK)
        self._observer.succeeded()

    async def aclose(self) -> None:
        """Closes the upstream response (which cancels it if unfinished) and frees the slot."""
        if self._closed:
            return
        self._closed = True
        try:
            await self._stack.aclose()
        finally:
            self._lease.release()
            self._observer.closed()


@dataclass(frozen=True)
class WholeAnswer:
    text: str
    credential_id: str
    completion_tokens: int
    first_piece_at: float  # time.monotonic() when the first piece of this answer arrived


class AnswerSource:
    """What every request's failover shares: the pool, GPT-Omni, the policy, and who watches."""

    def __init__(self, pool: Pool, upstream: UpstreamClient, policy: FailoverPolicy,
                 observer: FailoverObserver = UNWATCHED) -> None:
        self.pool = pool
        self.upstream = upstream
        self.policy = policy
        self.observer = observer

    def failover(self, prompt: str) -> Failover:
        return Failover(self, prompt)


class Failover:
    """One request's attempts at an answer, across credentials."""

    def __init__(self, source: AnswerSource, prompt: str) -> None:
        self._source = source
        self._prompt = prompt
        self._tried: set[str] = set()  # credential ids not to try again, across re-opens
        self._attempts = 0

    async def open(self) -> UpstreamAnswer:
        """An answer whose first piece is in hand (for streaming)."""
        loop = asyncio.get_running_loop()
        policy, pool = self._source.policy, self._source.pool
        deadline = loop.time() + policy.budget_seconds
        last_error: UpstreamError | None = None
        while self._attempts < policy.max_attempts:
            self._attempts += 1
            attempt = self._attempts
            remaining = deadline - loop.time()
            if remaining <= 0:
                break
            waiting_since = loop.time()
            try:
                lease = await pool.acquire(self._tried, wait_seconds=min(policy.acquire_wait_seconds, remaining))
            except PoolUnavailable:
                if last_error is None:
                    raise
                break
            finally:
                self._source.observer.slot_waited(loop.time() - waiting_since)
            if attempt > 1:
                self._source.observer.failed_over()
            self._tried.add(lease.credential.id)
            opened = await self._attempt(lease, attempt)
            if isinstance(opened, UpstreamAnswer):
                return opened
            last_error = opened
        raise await self._final_error(last_error)

    async def whole(self) -> WholeAnswer:
        """The complete answer (for a non-streamed response). Nothing has reached the client
        before it is complete, so an answer that breaks midway is started again elsewhere."""
        return await self.accepted(_as_is)

    async def accepted(self, accept: Callable[[WholeAnswer], T]) -> T:
        """`accept(answer)` of the first complete answer it does not reject with
        `UnusableAnswer`; the last rejection is raised when the attempts run out."""
        while True:
            whole = await self._complete_answer()
            try:
                return accept(whole)
            except UnusableAnswer as exc:
                self._tried.discard(whole.credential_id)
                if exc.retry_prompt is not None:
                    self._prompt = exc.retry_prompt
                log.warning("unusable answer", extra={"credential": whole.credential_id, "attempt": self._attempts,
                                                      "reason": exc.code})
                if not await self._may_try_again():
                    raise

    async def _complete_answer(self) -> WholeAnswer:
        while True:
            answer = await self.open()
            parts: list[str] = []
            try:
                async for piece in answer.pieces():
                    parts.append(piece)
                return WholeAnswer("".join(parts), answer.credential_id, answer.completion.tokens, answer.first_piece_at)
            except (AnswerTooLarge, AnswerTookTooLong):
                raise  # another credential would answer the same prompt at the same length
            except UpstreamFailed:
                if not await self._may_try_again():
                    raise
            finally:
                await answer.aclose()

    async def _may_try_again(self) -> bool:
        return (self._attempts < self._source.policy.max_attempts
                and await self._source.pool.unavailability(self._tried) is None)

    async def _attempt(self, lease: PoolLease, attempt: int) -> UpstreamAnswer | UpstreamError:
        source = self._source
        credential = lease.credential
        observer = source.observer.attempt(credential.id, attempt)
        stack = AsyncExitStack()
        started = time.monotonic()
        try:
            with observer.running():
                pieces = await stack.enter_async_context(source.upstream.chat(credential.cookie, self._prompt))
                try:
                    first = await anext(pieces)
                except StopAsyncIteration:
                    raise UpstreamError(Outcome.ERROR, "upstream returned an empty answer") from None
        except UpstreamError as exc:
            lease.report(exc.outcome, exc.retry_after)
            observer.failed(exc, answer_started=False)
            log.warning("upstream attempt failed", extra={"credential": credential.id, "attempt": attempt,
                                                         "outcome": exc.outcome.value, "reason": exc.message})
            await _abandon(stack, lease, observer)
            return exc
        except BaseException:  # a hang-up (cancellation) included: free the slot at once
            await _abandon(stack, lease, observer)
            raise
        observer.first_piece(time.monotonic() - started)
        return UpstreamAnswer(lease, first, pieces, stack, observer, source.policy)

    async def _final_error(self, last_error: UpstreamError | None) -> RelayError:
        # The pool's own state explains the failure better than the last attempt when
        # every credential is now cooling or ejected.
        unavailable = await self._source.pool.unavailability()
        if unavailable is not None and not isinstance(unavailable, (AllBusy, NothingLeftToTry)):
            return unavailable
        if last_error is None:
            return UpstreamTimedOut("gave up before any upstream attempt: the failover time budget ran out")
        return domain_error(last_error)


def _as_is(answer: WholeAnswer) -> WholeAnswer:
    return answer


async def _abandon(stack: AsyncExitStack, lease: PoolLease, observer: AttemptObserver) -> None:
    """Closes an attempt's upstream response; the slot is freed whatever closing does."""
    try:
        await stack.aclose()
    finally:
        lease.release()
        observer.closed()
