"""Async streaming client for GPT-Omni.

aiohttp streams the answer on the event loop; cloudscraper (see clearance.py) is asked
only when Cloudflare interposes a challenge. Timeouts are split the way an LLM stream
needs: a deadline for the first text, a separate idle limit between pieces of text, and
a limit on the whole answer; each holds in wall time whatever bytes arrive.

Why aiohttp and not httpx here: with hundreds of open upstream streams, httpcore's
pool rescans every connection (a poll(2) each) whenever a response closes, which made
relay CPU grow with the square of concurrency (docs/performance.md has the profile).
aiohttp's connector does not, and kopf already depends on it.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

import aiohttp

from gptomni_common.upstream.clearance import ClearanceSolver
from gptomni_common.upstream.decoding import AnswerDecoder, UndecodableAnswer, decode_head
from gptomni_common.upstream.errors import AnswerOverTime, UpstreamError
from gptomni_common.upstream.protocol import (
    Outcome,
    chat_body,
    chat_headers,
    chat_url,
    classify_status,
    parse_retry_after,
)

_ERROR_BODY_PEEK = 4096
CHECK_PROMPT = "Reply with the single word: pong"


@dataclass(frozen=True)
class UpstreamTimeouts:
    connect: float = 10.0
    first_byte: float = 60.0  # request sent -> first text
    idle: float = 60.0  # longest wait for the next text
    answer: float | None = None  # first text -> end of the answer (None: no limit)


@dataclass(frozen=True)
class CheckResult:
    outcome: Outcome
    latency_ms: int
    detail: str
    retry_after: float | None = None


class UpstreamClient:
    def __init__(
        self,
        base_url: str,
        timeouts: UpstreamTimeouts | None = None,
        max_connections: int = 2048,
        solver: ClearanceSolver | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.timeouts = timeouts or UpstreamTimeouts()
        self.solver = solver or ClearanceSolver(self.base_url)
        self._url = chat_url(self.base_url)
        self._max_connections = max_connections
        self._session: aiohttp.ClientSession | None = None

    def _http(self) -> aiohttp.ClientSession:
        # Created lazily: an aiohttp session belongs to the loop that first uses it.
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=self._max_connections, limit_per_host=0, keepalive_timeout=30),
                # Total/read limits are enforced per piece below; aiohttp only bounds connecting.
                timeout=aiohttp.ClientTimeout(total=None, connect=self.timeouts.connect, sock_read=None),
                cookie_jar=aiohttp.DummyCookieJar(),  # cookies are per credential, never shared
                auto_decompress=False,  # decoding.py inflates in bounded steps
            )
        return self._session

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()
        self.solver.close()

    @asynccontextmanager
    async def chat(self, cookie: str, prompt: str) -> AsyncIterator[AsyncIterator[str]]:
        """Open one answer stream; yields an iterator of text pieces.

        Raises UpstreamError before yielding when the upstream refuses, and from the
        iterator when the stream breaks or stalls. Leaving the context early closes the
        connection, which cancels the upstream request.
        """
        loop = asyncio.get_running_loop()
        first_byte_deadline = loop.time() + self.timeouts.first_byte
        body = chat_body(prompt)
        for attempt in range(2):
            generation = self.solver.generation
            clearance = self.solver.current
            headers = chat_headers(self.base_url, clearance.cookie_header(cookie), clearance.user_agent)
            response = await self._send(headers, body, first_byte_deadline)
            if response.status == 200:
                try:
                    yield self._pieces(response, first_byte_deadline)
                finally:
                    if response.content.at_eof():
                        response.release()
                    else:
                        response.close()
                return
            error = await self._refusal(response, first_byte_deadline)
            if error.outcome is Outcome.CHALLENGE and attempt == 0 and await self._refreshed(generation, first_byte_deadline):
                continue
            try:
                raise error
            finally:
                # The raised error's traceback holds this frame: a frame that still held the
                # error would make a cycle (error, traceback, frame, the response) that only
                # the garbage collector frees.
                del error

    async def check_cookie(self, cookie: str, prompt: str = CHECK_PROMPT) -> CheckResult:
        """A minimal real prompt: what the operator's health checks use. The first text of
        the answer proves the cookie works; nothing more is read (an answer may be huge)."""
        started = time.monotonic()
        try:
            async with self.chat(cookie, prompt) as pieces:
                answered = False
                async for piece in pieces:
                    if piece.strip():
                        answered = True
                        break
        except UpstreamError as exc:
            return CheckResult(exc.outcome, _ms_since(started), exc.message, exc.retry_after)
        if not answered:
            return CheckResult(Outcome.ERROR, _ms_since(started), "upstream returned an empty answer")
        return CheckResult(Outcome.OK, _ms_since(started), "answered")

    async def _refreshed(self, generation: int, deadline: float) -> bool:
        """A new clearance, waited for no longer than the attempt's own first-byte deadline
        (the solve goes on for whoever else waits; it has a deadline of its own)."""
        try:
            async with asyncio.timeout_at(deadline):
                return await self.solver.refresh(generation)
        except TimeoutError:
            return False

    async def _send(self, headers: dict[str, str], body: bytes, deadline: float) -> aiohttp.ClientResponse:
        try:
            async with asyncio.timeout_at(deadline):
                return await self._http().post(self._url, data=body, headers=headers, allow_redirects=False)
        except TimeoutError:
            raise UpstreamError(Outcome.TIMEOUT, "upstream did not answer in time") from None
        except (aiohttp.ClientError, ValueError) as exc:  # ValueError: aiohttp refusing a malformed request
            raise UpstreamError(Outcome.ERROR, f"upstream connection failed ({type(exc).__name__})") from None

    async def _refusal(self, response: aiohttp.ClientResponse, deadline: float) -> UpstreamError:
        head = b""
        try:
            async with asyncio.timeout_at(deadline):
                head = await response.content.read(_ERROR_BODY_PEEK)
        except (TimeoutError, aiohttp.ClientError):
            pass
        finally:
            response.close()
        text = decode_head(head, response.headers.get("content-encoding"), response.charset, _ERROR_BODY_PEEK)
        outcome = classify_status(response.status, response.headers, text)
        return UpstreamError(
            outcome,
            f"upstream answered HTTP {response.status} ({outcome.value})",
            status=response.status,
            retry_after=parse_retry_after(response.headers.get("retry-after")),
        )

    async def _pieces(self, response: aiohttp.ClientResponse, first_byte_deadline: float) -> AsyncIterator[str]:
        try:
            decoder = AnswerDecoder(response.headers.get("content-encoding"), response.charset)
        except UndecodableAnswer as exc:
            raise UpstreamError(Outcome.ERROR, str(exc)) from None
        content = response.content
        deadlines = _AnswerDeadlines(content, first_byte_deadline, self.timeouts)
        try:
            while True:
                try:
                    data = await content.readany()
                except _UpstreamSilent as exc:
                    _forget_tracebacks(exc)
                    what = "stalled mid-answer" if deadlines.received_any else "sent no answer in time"
                    raise UpstreamError(Outcome.TIMEOUT, f"upstream {what}") from None
                except _AnswerOverTime as exc:
                    _forget_tracebacks(exc)
                    raise AnswerOverTime(exc.limit_seconds) from None
                except aiohttp.ClientError as exc:
                    _forget_tracebacks(exc)
                    raise UpstreamError(Outcome.ERROR, f"upstream stream broke ({type(exc).__name__})") from None
                try:
                    if not data:  # end of body
                        tail = decoder.finish()
                        if tail:
                            yield tail
                        return
                    for piece in decoder.feed(data):
                        deadlines.heard()
                        deadlines.reading = False  # the piece is the relay's now, not the upstream's
                        yield piece
                        deadlines.reading = True
                except UndecodableAnswer as exc:
                    raise UpstreamError(Outcome.ERROR, str(exc)) from None
        except UpstreamError:
            raise
        except Exception as exc:
            # Whatever else an answer makes the reading code trip on is a failed attempt
            # (failover), never a crash of the request.
            raise UpstreamError(Outcome.ERROR, f"upstream answer could not be read ({type(exc).__name__})") from None
        finally:
            deadlines.cancel()


class _UpstreamSilent(Exception):
    pass


def _forget_tracebacks(exc: BaseException | None) -> None:
    """aiohttp's reader keeps the exception it was failed with, and that exception's
    traceback holds the reader's frames: a cycle that keeps the whole broken response for
    the garbage collector. Nothing reads these tracebacks (UpstreamError replaces them)."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:  # an explicit `__cause__` may loop back
        seen.add(id(exc))
        exc.__traceback__ = None
        exc = exc.__cause__ or exc.__context__


class _AnswerOverTime(Exception):
    def __init__(self, limit_seconds: float) -> None:
        super().__init__()
        self.limit_seconds = limit_seconds


class _AnswerDeadlines:
    """Fails the answer's reader when a bound passes, in wall time whatever arrives: the
    first-byte deadline until the first text, then the idle limit after each piece of
    text, and the answer limit from the first text on. Bytes that decode to no text (an
    empty deflate block every few seconds) move no deadline; time the relay itself holds a
    piece (its own client is slow to take it) is no upstream silence.

    Re-arming an event-loop timer for every piece (what `asyncio.timeout` around each read
    does) costs ~8 µs a piece; here a piece only moves the deadline, and the one timer is
    re-armed when it fires early.
    """

    def __init__(self, content: aiohttp.StreamReader, first_byte_deadline: float, timeouts: UpstreamTimeouts) -> None:
        self._loop = asyncio.get_running_loop()
        self._content = content
        self._idle = timeouts.idle
        self._answer_limit = timeouts.answer
        self._silent_at = first_byte_deadline
        self._answer_ends = math.inf  # set by the first text
        self.received_any = False
        self.reading = True  # False while the relay's consumer holds a piece
        self._timer = self._loop.call_at(first_byte_deadline, self._check)

    def heard(self) -> None:
        now = self._loop.time()
        if not self.received_any:
            self.received_any = True
            if self._answer_limit is not None:
                self._answer_ends = now + self._answer_limit
        self._silent_at = now + self._idle
        due = min(self._silent_at, self._answer_ends)
        if due < self._timer.when():  # a shorter limit than the first-byte wait
            self._timer.cancel()
            self._timer = self._loop.call_at(due, self._check)

    def cancel(self) -> None:
        self._timer.cancel()

    def _check(self) -> None:
        now = self._loop.time()
        if now >= self._answer_ends:
            self._content.set_exception(_AnswerOverTime(self._answer_limit or 0.0))
            return
        if not self.reading:
            self._silent_at = now + self._idle
        if now < self._silent_at:
            self._timer = self._loop.call_at(min(self._silent_at, self._answer_ends), self._check)
        else:
            self._content.set_exception(_UpstreamSilent())


def _ms_since(started: float) -> int:
    return int((time.monotonic() - started) * 1000)
