"""Async streaming client for GPT-Omni.

httpx streams the answer on the event loop; cloudscraper (see clearance.py) is asked
only when Cloudflare interposes a challenge. Timeouts are split the way an LLM stream
needs: a deadline for the first byte and a separate idle limit between pieces.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

import httpx

from gptomni_relay.upstream.clearance import ClearanceSolver
from gptomni_relay.upstream.errors import UpstreamError
from gptomni_relay.upstream.protocol import (
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
    first_byte: float = 60.0
    idle: float = 60.0


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
        # read=None: the per-piece limits below are the real read timeouts.
        self._http = httpx.AsyncClient(
            timeout=httpx.Timeout(connect=self.timeouts.connect, read=None, write=30.0, pool=self.timeouts.connect),
            limits=httpx.Limits(max_connections=max_connections, max_keepalive_connections=max_connections),
            follow_redirects=False,
        )

    async def aclose(self) -> None:
        await self._http.aclose()
        self.solver.close()

    @asynccontextmanager
    async def chat(self, cookie: str, prompt: str) -> AsyncIterator[AsyncIterator[str]]:
        """Open one answer stream; yields an iterator of text pieces.

        Raises UpstreamError before yielding when the upstream refuses, and from the
        iterator when the stream breaks or stalls.
        """
        loop = asyncio.get_running_loop()
        first_byte_deadline = loop.time() + self.timeouts.first_byte
        body = chat_body(prompt)
        for attempt in range(2):
            generation = self.solver.generation
            clearance = self.solver.current
            request = self._http.build_request(
                "POST",
                self._url,
                content=body,
                headers=chat_headers(self.base_url, clearance.cookie_header(cookie), clearance.user_agent),
            )
            response = await self._send(request, first_byte_deadline)
            if response.status_code == 200:
                try:
                    yield self._pieces(response, first_byte_deadline)
                finally:
                    await response.aclose()
                return
            error = await self._refusal(response, first_byte_deadline)
            if error.outcome is Outcome.CHALLENGE and attempt == 0 and await self.solver.refresh(generation):
                continue
            raise error

    async def check_cookie(self, cookie: str, prompt: str = CHECK_PROMPT) -> CheckResult:
        """A minimal real prompt, read to the end: what the operator's health checks use."""
        started = time.monotonic()
        try:
            async with self.chat(cookie, prompt) as pieces:
                answer = "".join([piece async for piece in pieces])
        except UpstreamError as exc:
            return CheckResult(exc.outcome, _ms_since(started), exc.message, exc.retry_after)
        if not answer.strip():
            return CheckResult(Outcome.ERROR, _ms_since(started), "upstream returned an empty answer")
        return CheckResult(Outcome.OK, _ms_since(started), "answered")

    async def _send(self, request: httpx.Request, deadline: float) -> httpx.Response:
        try:
            async with asyncio.timeout_at(deadline):
                return await self._http.send(request, stream=True)
        except TimeoutError:
            raise UpstreamError(Outcome.TIMEOUT, "upstream did not answer in time") from None
        except httpx.TimeoutException:
            raise UpstreamError(Outcome.TIMEOUT, "upstream connection timed out") from None
        except httpx.HTTPError as exc:
            raise UpstreamError(Outcome.ERROR, f"upstream connection failed ({type(exc).__name__})") from None

    async def _refusal(self, response: httpx.Response, deadline: float) -> UpstreamError:
        head = b""
        try:
            async with asyncio.timeout_at(deadline):
                async for chunk in response.aiter_bytes():
                    head += chunk
                    if len(head) >= _ERROR_BODY_PEEK:
                        break
        except (TimeoutError, httpx.HTTPError):
            pass
        finally:
            await response.aclose()
        outcome = classify_status(response.status_code, response.headers, head[:_ERROR_BODY_PEEK].decode("utf-8", "replace"))
        return UpstreamError(
            outcome,
            f"upstream answered HTTP {response.status_code} ({outcome.value})",
            status=response.status_code,
            retry_after=parse_retry_after(response.headers.get("retry-after")),
        )

    async def _pieces(self, response: httpx.Response, first_byte_deadline: float) -> AsyncIterator[str]:
        pieces = response.aiter_text()
        received_any = False
        while True:
            try:
                if received_any:
                    async with asyncio.timeout(self.timeouts.idle):
                        piece = await anext(pieces)
                else:
                    async with asyncio.timeout_at(first_byte_deadline):
                        piece = await anext(pieces)
            except StopAsyncIteration:
                return
            except TimeoutError:
                what = "stalled mid-answer" if received_any else "sent no answer in time"
                raise UpstreamError(Outcome.TIMEOUT, f"upstream {what}") from None
            except httpx.HTTPError as exc:
                raise UpstreamError(Outcome.ERROR, f"upstream stream broke ({type(exc).__name__})") from None
            if piece:
                received_any = True
                yield piece


def _ms_since(started: float) -> int:
    return int((time.monotonic() - started) * 1000)
