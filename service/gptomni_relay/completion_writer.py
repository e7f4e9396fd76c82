"""Writing an opened answer back to the client: OpenAI SSE chunks or one chat.completion."""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import AsyncGenerator, Awaitable, Callable

from fastapi.responses import JSONResponse
from pydantic import BaseModel
from pydantic_core import to_json

from gptomni_relay.answer import OpenAnswer, upstream_error
from gptomni_relay.errors import APIError
from gptomni_relay.event_stream import LastEvents, sse_data
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


def sse_event(chunk: BaseModel, exclude: set[str] | None = None) -> bytes:
    return sse_data(chunk.model_dump_json(exclude=exclude).encode())


class ContentChunkTemplate:
    """Renders the common chunk (`delta: {content}` only) by splicing the JSON-encoded
    piece into the model's own rendered event: one model dump per stream, not per piece."""

    def __init__(self, event_for: Callable[[Delta], bytes]) -> None:
        marker = f"piece-{uuid.uuid4().hex}"
        self._frame_start, self._frame_end = event_for(Delta(content=marker)).split(to_json(marker))

    def event(self, piece: str) -> bytes:
        return b"".join((self._frame_start, to_json(piece), self._frame_end))


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
        options = body.stream_options
        self._include_usage = options is not None and options.include_usage

    def _chunk_event(self, delta: Delta | None = None, usage: Usage | None = None) -> bytes:
        """A chunk with one choice carrying `delta`; with no delta, the closing chunk; with
        `usage`, the usage chunk. Like OpenAI, chunks carry the `usage` field (null until the
        last) only when the client asked for usage in `stream_options`."""
        choices = [] if usage else [ChunkChoice(delta=delta or Delta(), finish_reason=None if delta else "stop")]
        chunk = ChatCompletionChunk(id=self.id, created=self.created, model=self._body.model, choices=choices, usage=usage)
        return sse_event(chunk, exclude=None if self._include_usage else {"usage"})

    async def sse_events(self) -> AsyncGenerator[bytes, None]:
        metrics = self._runtime.metrics
        metrics.active_streams.inc()
        status = "200"
        try:
            pieces = self._answer.pieces()
            first = await anext(pieces)
            yield self._chunk_event(Delta(role="assistant", content=first))
            template = ContentChunkTemplate(self._chunk_event)
            async for piece in pieces:
                yield template.event(piece)
            closing = [self._chunk_event()]
            usage = self._account()
            if self._include_usage:
                closing.append(self._chunk_event(usage=usage))
            closing.append(sse_data(b"[DONE]"))
            yield LastEvents(b"".join(closing))
        except UpstreamError as exc:
            error = upstream_error(exc)
            status = str(error.status)
            yield LastEvents(sse_event(error.body()))
        except BaseException:
            status = "499"  # the client went away; nginx's name for it
            raise
        finally:
            # A hang-up arrives as one task cancellation, already spent by now, and closing
            # the upstream response never suspends: this clean-up always runs to the end.
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
                        # Raised without a name: a local holding it would hold this frame through
                        # its traceback, a cycle only the garbage collector frees.
                        raise upstream_error(exc) from None
                self._answer = await reopen()
        except APIError as error:
            status = str(error.status)
            raise
        except asyncio.CancelledError:
            status = "499"  # the client hung up (hang_up.py)
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
