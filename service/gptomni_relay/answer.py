"""Open an upstream answer with failover, then hand its pieces to the response writer.

Until the first piece of text exists nothing has reached the client, so a refusal,
timeout or broken stream is retried on another credential (bounded in attempts and
time). Once a piece exists the answer is committed to that credential: a later break
surfaces to the client as an error event (streaming) or an error status.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from dataclasses import dataclass

from opentelemetry import trace
from opentelemetry.trace import Span, Status, StatusCode

from gptomni_relay.errors import APIError
from gptomni_relay.metrics import RelayMetrics
from gptomni_relay.pool import (
    AllBusy,
    AllCoolingDown,
    CredentialPool,
    Lease,
    NoCredentials,
    NothingLeftToTry,
    PoolUnavailable,
)
from gptomni_relay.upstream import Outcome, UpstreamClient, UpstreamError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class FailoverPolicy:
    max_attempts: int = 3
    budget_seconds: float = 30.0
    acquire_wait_seconds: float = 5.0


def pool_error(exc: PoolUnavailable) -> APIError:
    if isinstance(exc, NoCredentials):
        return APIError(503, f"No usable GPT-Omni credential: {exc}.", code="no_credentials")
    if isinstance(exc, AllCoolingDown):
        return APIError(429, f"All GPT-Omni credentials are cooling down after upstream rate limits; {exc}.",
                        code="credentials_cooling_down", retry_after=exc.retry_after)
    if isinstance(exc, AllBusy):
        return APIError(429, "All GPT-Omni credentials are at their concurrency limit; retry shortly.",
                        code="credentials_busy", retry_after=exc.retry_after)
    return APIError(503, str(exc), code="no_credentials")


def upstream_error(exc: UpstreamError) -> APIError:
    if exc.outcome is Outcome.TIMEOUT:
        return APIError(504, f"GPT-Omni timed out: {exc.message}.", code="upstream_timeout")
    return APIError(502, f"GPT-Omni failed: {exc.message}.", code="upstream_error")


class OpenAnswer:
    """An answer whose first piece is in hand. Iterate `pieces()` once, then `aclose()`."""

    def __init__(self, lease: Lease, first_piece: str, rest: AsyncIterator[str], stack: AsyncExitStack,
                 span: Span, metrics: RelayMetrics) -> None:
        self.credential_id = lease.credential.id
        self._lease = lease
        self._first = first_piece
        self._rest = rest
        self._stack = stack
        self._span = span
        self._metrics = metrics
        self._closed = False
        self.text_parts: list[str] = []

    async def pieces(self) -> AsyncIterator[str]:
        self.text_parts.append(self._first)
        yield self._first
        try:
            async for piece in self._rest:
                self.text_parts.append(piece)
                yield piece
        except UpstreamError as exc:
            self._lease.report(exc.outcome, exc.retry_after)
            self._metrics.upstream_attempts.labels(self.credential_id, exc.outcome.value).inc()
            self._metrics.stream_interruptions.labels(exc.outcome.value).inc()
            self._span.set_attribute("gptomni.outcome", exc.outcome.value)
            self._span.set_status(Status(StatusCode.ERROR, exc.message))
            raise
        self._lease.report(Outcome.OK)
        self._metrics.upstream_attempts.labels(self.credential_id, Outcome.OK.value).inc()
        self._span.set_attribute("gptomni.outcome", Outcome.OK.value)

    @property
    def text(self) -> str:
        return "".join(self.text_parts)

    async def aclose(self) -> None:
        """Closes the upstream response (which cancels it if unfinished) and frees the slot."""
        if self._closed:
            return
        self._closed = True
        try:
            await self._stack.aclose()
        finally:
            self._lease.release()
            self._span.end()


class AnswerOpener:
    def __init__(self, pool: CredentialPool, upstream: UpstreamClient, metrics: RelayMetrics,
                 policy: FailoverPolicy, tracer: trace.Tracer) -> None:
        self._pool = pool
        self._upstream = upstream
        self._metrics = metrics
        self._policy = policy
        self._tracer = tracer

    @property
    def max_attempts(self) -> int:
        return self._policy.max_attempts

    async def open(self, prompt: str, tried: set[str] | None = None) -> OpenAnswer:
        """`tried` collects the credential ids used; pass the same set to a later call
        to go on failing over where an earlier answer broke (attempts count across both)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._policy.budget_seconds
        tried = set() if tried is None else tried
        last_error: UpstreamError | None = None
        for attempt in range(len(tried) + 1, self._policy.max_attempts + 1):
            remaining = deadline - loop.time()
            if remaining <= 0:
                break
            try:
                lease = await self._pool.acquire(tried, wait_seconds=min(self._policy.acquire_wait_seconds, remaining))
            except PoolUnavailable as exc:
                if last_error is None:
                    raise pool_error(exc) from None
                break
            if attempt > 1:
                self._metrics.failovers.inc()
            tried.add(lease.credential.id)
            opened = await self._attempt(lease, prompt, attempt)
            if isinstance(opened, OpenAnswer):
                return opened
            last_error = opened
        raise self._final_error(last_error, tried)

    async def _attempt(self, lease: Lease, prompt: str, attempt: int) -> OpenAnswer | UpstreamError:
        credential = lease.credential
        span = self._tracer.start_span(
            "gptomni.upstream", attributes={"gptomni.credential_id": credential.id, "gptomni.attempt": attempt}
        )
        stack = AsyncExitStack()
        started = time.monotonic()
        try:
            with trace.use_span(span, end_on_exit=False):
                pieces = await stack.enter_async_context(self._upstream.chat(credential.cookie, prompt))
                try:
                    first = await anext(pieces)
                except StopAsyncIteration:
                    raise UpstreamError(Outcome.ERROR, "upstream returned an empty answer") from None
        except UpstreamError as exc:
            await stack.aclose()
            lease.report(exc.outcome, exc.retry_after)
            lease.release()
            self._metrics.upstream_attempts.labels(credential.id, exc.outcome.value).inc()
            span.set_attribute("gptomni.outcome", exc.outcome.value)
            span.set_status(Status(StatusCode.ERROR, exc.message))
            span.end()
            log.warning("upstream attempt failed", extra={"credential": credential.id, "attempt": attempt,
                                                         "outcome": exc.outcome.value, "reason": exc.message})
            return exc
        except BaseException:
            await stack.aclose()
            lease.release()
            span.end()
            raise
        span.set_attribute("gptomni.ttft_ms", round((time.monotonic() - started) * 1000, 1))
        return OpenAnswer(lease, first, pieces, stack, span, self._metrics)

    def _final_error(self, last_error: UpstreamError | None, tried: set[str]) -> APIError:
        # The pool's own state explains the failure better than the last attempt when
        # every credential is now cooling or ejected.
        unavailable = self._pool.unavailability()
        if unavailable is not None and not isinstance(unavailable, (AllBusy, NothingLeftToTry)):
            return pool_error(unavailable)
        if last_error is None:
            return APIError(504, "Gave up before any upstream attempt: the failover time budget ran out.",
                            code="upstream_timeout")
        return upstream_error(last_error)
