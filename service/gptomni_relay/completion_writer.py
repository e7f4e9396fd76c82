"""Writing an opened answer back to the client: OpenAI SSE chunks or one chat.completion."""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable

import anyio
from fastapi.responses import JSONResponse

from gptomni_relay.answer import OpenAnswer, upstream_error
from gptomni_relay.errors import APIError
from gptomni_relay.runtime import RelayRuntime
from gptomni_relay.schemas import (
    AssistantMessage,
    ChatCompletion,
    ChatCompletionChunk,
    ChatCompletionRequest,
    Choice,
    ChunkChoice,
    Delta,
    Usage,
)
from gptomni_relay.upstream import UpstreamError
from gptomni_relay.usage import estimate_usage

log = logging.getLogger(__name__)


class CompletionWriter:
    def __init__(self, runtime: RelayRuntime, body: ChatCompletionRequest, prompt: str,
                 answer: OpenAnswer, started: float) -> None:
        self.id = f"chatcmpl-{uuid.uuid4().hex}"
        self.created = int(time.time())
        self._runtime = runtime
        self._body = body
        self._prompt = prompt
        self._answer = answer
        self._started = started

    def _chunk(self, delta: Delta, finish: bool = False) -> str:
        chunk = ChatCompletionChunk(
            id=self.id, created=self.created, model=self._body.model,
            choices=[ChunkChoice(delta=delta, finish_reason="stop" if finish else None)],
        )
        return chunk.model_dump_json()

    async def sse_events(self) -> AsyncIterator[dict[str, str]]:
        metrics = self._runtime.metrics
        metrics.active_streams.inc()
        status = "200"
        try:
            first = True
            async for piece in self._answer.pieces():
                yield {"data": self._chunk(Delta(role="assistant", content=piece) if first else Delta(content=piece))}
                first = False
            yield {"data": self._chunk(Delta(), finish=True)}
            usage = self._account()
            options = self._body.stream_options
            if options is not None and options.include_usage:
                final = ChatCompletionChunk(id=self.id, created=self.created, model=self._body.model, choices=[], usage=usage)
                yield {"data": final.model_dump_json()}
            yield {"data": "[DONE]"}
        except UpstreamError as exc:
            error = upstream_error(exc)
            status = str(error.status)
            yield {"data": error.body().model_dump_json()}
        except BaseException:
            status = "499"  # the client went away; nginx's name for it
            raise
        finally:
            # Shielded: a cancelled stream must still close upstream and free its slot.
            with anyio.CancelScope(shield=True):
                await self._answer.aclose()
            metrics.active_streams.dec()
            self._finish(status)

    async def json_response(self, reopen: Callable[[], Awaitable[OpenAnswer]],
                            attempts_left: Callable[[], bool]) -> JSONResponse:
        """Collects the whole answer. Nothing has reached the client yet, so an answer that
        breaks midway is started again on another credential while attempts remain."""
        status = "200"
        try:
            while True:
                try:
                    async for _ in self._answer.pieces():
                        pass
                    break
                except UpstreamError as exc:
                    await self._answer.aclose()
                    if not attempts_left():
                        error = upstream_error(exc)
                        status = str(error.status)
                        raise error from None
                try:
                    self._answer = await reopen()
                except APIError as error:
                    status = str(error.status)
                    raise
        finally:
            await self._answer.aclose()
            self._finish(status)
        completion = ChatCompletion(
            id=self.id, created=self.created, model=self._body.model,
            choices=[Choice(message=AssistantMessage(content=self._answer.text))],
            usage=self._account(),
        )
        return JSONResponse(completion.model_dump(), headers={"x-request-id": self.id})

    def _account(self) -> Usage:
        usage = estimate_usage(self._prompt, self._answer.text)
        metrics = self._runtime.metrics
        metrics.prompt_tokens.labels(self._body.model).inc(usage.prompt_tokens)
        metrics.completion_tokens.labels(self._body.model).inc(usage.completion_tokens)
        return usage

    def _finish(self, status: str) -> None:
        duration = time.monotonic() - self._started
        self._runtime.metrics.observe_request(self._body.model, status, self._body.stream, duration)
        log.info("chat completion finished", extra={
            "request_id": self.id, "model": self._body.model, "stream": self._body.stream, "status": status,
            "credential": self._answer.credential_id, "duration_ms": round(duration * 1000, 1),
        })
