"""Rendering an answer for the client: OpenAI SSE chunks, or one chat.completion.

The writer decides nothing about retries (core/failover.py does); it renders what it is
given, and the end of a request into the metrics and the request log.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import AsyncGenerator, Callable

from fastapi.responses import JSONResponse
from pydantic_core import to_json

from gptomni_relay.core.errors import UpstreamFailed
from gptomni_relay.core.failover import UpstreamAnswer, WholeAnswer
from gptomni_relay.core.shaping import FinishReason, ShapedAnswer, TextCutter
from gptomni_relay.core.usage import TokenUsage
from gptomni_relay.metrics import RelayMetrics
from gptomni_relay.openai_api.errors import error_for
from gptomni_relay.openai_api.event_stream import StreamEnd, sse_data, sse_event
from gptomni_relay.openai_api.schemas import (
    AssistantMessage,
    ChatCompletion,
    ChatCompletionChunk,
    ChatCompletionRequest,
    Choice,
    ChunkChoice,
    Delta,
    FunctionCall,
    FunctionCallDelta,
    ToolCallDelta,
    ToolCallOut,
    Usage,
)

log = logging.getLogger(__name__)

CLIENT_GONE = "499"  # nginx's name for a request whose client went away


class ContentChunkTemplate:
    """Renders the common chunk (`delta: {content}` only) by splicing the JSON-encoded
    piece into the model's own rendered event: one model dump per stream, not per piece."""

    def __init__(self, event_for: Callable[[Delta], bytes]) -> None:
        marker = f"piece-{uuid.uuid4().hex}"
        self._frame_start, self._frame_end = event_for(Delta(content=marker)).split(to_json(marker))

    def event(self, piece: str) -> bytes:
        return b"".join((self._frame_start, to_json(piece), self._frame_end))


class CompletionWriter:
    def __init__(self, metrics: RelayMetrics, body: ChatCompletionRequest, prompt_tokens: int, started: float,
                 api_key: str) -> None:
        self.id = f"chatcmpl-{uuid.uuid4().hex}"
        self.created = int(time.time())
        self._metrics = metrics
        self._body = body
        self._prompt_tokens = prompt_tokens
        self._started = started
        self._finished = False
        self._api_key = api_key  # the key's name (api_keys.py), never the key
        options = body.stream_options
        self._include_usage = options is not None and options.include_usage
        # Told the tokens of the answer, for the key's budget (openai_api/admission.py).
        self.on_usage: Callable[[int], None] = lambda tokens: None

    def _chunk_event(self, delta: Delta | None = None, usage: Usage | None = None,
                     finish_reason: FinishReason = "stop") -> bytes:
        """A chunk with one choice carrying `delta`; with no delta, the closing chunk; with
        `usage`, the usage chunk. Like OpenAI, chunks carry the `usage` field (null until the
        last) only when the client asked for usage in `stream_options`."""
        choices = [] if usage else [ChunkChoice(delta=delta or Delta(), finish_reason=None if delta else finish_reason)]
        chunk = ChatCompletionChunk(id=self.id, created=self.created, model=self._body.model, choices=choices, usage=usage)
        return sse_event(chunk, exclude=None if self._include_usage else {"usage"})

    def _stream_end(self, finish_reason: FinishReason, completion_tokens: int) -> StreamEnd:
        closing = [self._chunk_event(finish_reason=finish_reason)]
        usage = self._account(completion_tokens)
        if self._include_usage:
            closing.append(self._chunk_event(usage=usage))
        closing.append(sse_data(b"[DONE]"))
        return StreamEnd(b"".join(closing))

    async def sse_events(self, answer: UpstreamAnswer, cutter: TextCutter | None = None) -> AsyncGenerator[bytes, None]:
        """The answer as it arrives; with a `cutter`, only what its stops and token limit let
        through, and GPT-Omni is no longer read once it has cut the answer."""
        self._metrics.active_streams.inc()
        status = "200"
        try:
            pieces = answer.pieces()
            if cutter is None:
                first = await anext(pieces)
                yield self._chunk_event(Delta(role="assistant", content=first))
                template = ContentChunkTemplate(self._chunk_event)
                async for piece in pieces:
                    yield template.event(piece)
                yield self._stream_end("stop", answer.completion.tokens)
            else:
                yield self._chunk_event(Delta(role="assistant", content=""))
                template = ContentChunkTemplate(self._chunk_event)
                async for piece in pieces:
                    if text := cutter.feed(piece):
                        yield template.event(text)
                    if cutter.done:
                        break
                await pieces.aclose()
                if text := cutter.finish():
                    yield template.event(text)
                yield self._stream_end(cutter.finish_reason or "stop", cutter.meter.tokens)
        except UpstreamFailed as exc:
            error = error_for(exc)
            status = str(error.status)
            yield StreamEnd(sse_event(error.body()))
        except (asyncio.CancelledError, GeneratorExit):
            status = CLIENT_GONE
            raise
        except BaseException:
            status = "500"
            raise
        finally:
            # A hang-up arrives as one task cancellation, already spent by now, and closing
            # the upstream response never suspends: this clean-up always runs to the end.
            await answer.aclose()
            self._metrics.active_streams.dec()
            self.finish(status, answer.credential_id)

    async def shaped_sse_events(self, shaped: ShapedAnswer, credential_id: str) -> AsyncGenerator[bytes, None]:
        """A whole answer already shaped (tool calls, JSON), sent as the chunks an SDK
        assembles: the role, the text or each tool call (id and name, then its arguments),
        the finish."""
        status = CLIENT_GONE
        try:
            yield self._chunk_event(Delta(role="assistant", content=shaped.content))
            for index, call in enumerate(shaped.tool_calls):
                yield self._chunk_event(Delta(tool_calls=[ToolCallDelta(
                    index=index, id=call.id, type="function", function=FunctionCallDelta(name=call.name, arguments=""))]))
                yield self._chunk_event(Delta(tool_calls=[ToolCallDelta(
                    index=index, function=FunctionCallDelta(arguments=call.arguments))]))
            yield self._stream_end(shaped.finish_reason, shaped.completion_tokens)
            status = "200"
        finally:
            self.finish(status, credential_id)

    def json_response(self, answer: WholeAnswer) -> JSONResponse:
        return self.shaped_json_response(ShapedAnswer(answer.text, (), "stop", answer.completion_tokens),
                                         answer.credential_id)

    def shaped_json_response(self, shaped: ShapedAnswer, credential_id: str) -> JSONResponse:
        tool_calls = [ToolCallOut(id=call.id, function=FunctionCall(name=call.name, arguments=call.arguments))
                      for call in shaped.tool_calls]
        completion = ChatCompletion(
            id=self.id, created=self.created, model=self._body.model,
            choices=[Choice(message=AssistantMessage(content=shaped.content, tool_calls=tool_calls or None),
                            finish_reason=shaped.finish_reason)],
            usage=self._account(shaped.completion_tokens),
        )
        self.finish("200", credential_id)
        return JSONResponse(completion.model_dump(), headers={"x-request-id": self.id})

    def _account(self, completion_tokens: int) -> Usage:
        usage = TokenUsage(self._prompt_tokens, completion_tokens)
        self.on_usage(usage.total_tokens)
        self._metrics.prompt_tokens.labels(self._body.model).inc(usage.prompt_tokens)
        self._metrics.completion_tokens.labels(self._body.model).inc(usage.completion_tokens)
        return Usage(prompt_tokens=usage.prompt_tokens, completion_tokens=usage.completion_tokens,
                     total_tokens=usage.total_tokens)

    async def close_stream(self, answer: UpstreamAnswer) -> None:
        """After the response, whatever happened to it: the answer is closed (its slot
        freed) and the request counted, even if `sse_events` never got to start."""
        await answer.aclose()
        if not self._finished:
            self.finish(CLIENT_GONE, answer.credential_id)

    async def close_shaped_stream(self, credential_id: str) -> None:
        """`close_stream` for a stream of a whole answer: counted even if it never started."""
        if not self._finished:
            self.finish(CLIENT_GONE, credential_id)

    def finish(self, status: str, credential_id: str | None) -> None:
        """The request's end, whichever way it ended: its metrics and its log line."""
        self._finished = True
        duration = time.monotonic() - self._started
        self._metrics.observe_request(self._body.model, status, self._body.stream, duration, self._api_key)
        log.info("chat completion finished", extra={
            "request_id": self.id, "model": self._body.model, "stream": self._body.stream, "status": status,
            "credential": credential_id, "api_key": self._api_key, "duration_ms": round(duration * 1000, 1),
        })
