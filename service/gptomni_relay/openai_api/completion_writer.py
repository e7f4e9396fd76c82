"""Rendering a chat completion: OpenAI SSE chunks, or one chat.completion
(the shared steps are answer_writer.py's)."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from typing import Any

from gptomni_relay.core.shaping import FinishReason, ShapedAnswer
from gptomni_relay.metrics import RelayMetrics
from gptomni_relay.openai_api.answer_writer import AnswerWriter, PieceTemplate
from gptomni_relay.openai_api.errors import APIError
from gptomni_relay.openai_api.event_stream import sse_data, sse_event
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


class CompletionWriter(AnswerWriter):
    log_message = "chat completion finished"

    def __init__(self, metrics: RelayMetrics, body: ChatCompletionRequest, prompt_tokens: int, started: float,
                 api_key: str, model: str | None = None) -> None:
        super().__init__(metrics, model or body.model, bool(body.stream), prompt_tokens, started, api_key,
                         f"chatcmpl-{uuid.uuid4().hex}")
        self._body = body
        options = body.stream_options
        self._include_usage = options is not None and options.include_usage

    def _chunk_event(self, delta: Delta | None = None, usage: Usage | None = None,
                     finish_reason: FinishReason = "stop") -> bytes:
        """A chunk with one choice carrying `delta`; with no delta, the closing chunk; with
        `usage`, the usage chunk. Like OpenAI, chunks carry the `usage` field (null until the
        last) only when the client asked for usage in `stream_options`."""
        choices = [] if usage else [ChunkChoice(delta=delta or Delta(), finish_reason=None if delta else finish_reason)]
        chunk = ChatCompletionChunk(id=self.id, created=self.created, model=self._body.model, choices=choices, usage=usage)
        return sse_event(chunk, exclude=None if self._include_usage else {"usage"})

    def opening(self, first: str) -> bytes:
        return self._chunk_event(Delta(role="assistant", content=first))

    def piece_renderer(self) -> Callable[[str], bytes]:
        return PieceTemplate(lambda text: self._chunk_event(Delta(content=text))).event

    def closing(self, finish_reason: FinishReason, completion_tokens: int) -> bytes:
        closing = [self._chunk_event(finish_reason=finish_reason)]
        usage = self._usage(completion_tokens)
        if self._include_usage:
            closing.append(self._chunk_event(usage=usage))
        closing.append(sse_data(b"[DONE]"))
        return b"".join(closing)

    def failure(self, error: APIError) -> bytes:
        return sse_event(error.body())

    def shaped_events(self, shaped: ShapedAnswer) -> Iterator[bytes]:
        """The chunks an SDK assembles: the role, the text or each tool call (id and name,
        then its arguments), the finish."""
        yield self._chunk_event(Delta(role="assistant", content=shaped.content))
        for index, call in enumerate(shaped.tool_calls):
            yield self._chunk_event(Delta(tool_calls=[ToolCallDelta(
                index=index, id=call.id, type="function", function=FunctionCallDelta(name=call.name, arguments=""))]))
            yield self._chunk_event(Delta(tool_calls=[ToolCallDelta(
                index=index, function=FunctionCallDelta(arguments=call.arguments))]))
        yield self.closing(shaped.finish_reason, shaped.completion_tokens)

    def whole_object(self, shaped: ShapedAnswer) -> dict[str, Any]:
        tool_calls = [ToolCallOut(id=call.id, function=FunctionCall(name=call.name, arguments=call.arguments))
                      for call in shaped.tool_calls]
        return ChatCompletion(
            id=self.id, created=self.created, model=self._body.model,
            choices=[Choice(message=AssistantMessage(content=shaped.content, tool_calls=tool_calls or None),
                            finish_reason=shaped.finish_reason)],
            usage=self._usage(shaped.completion_tokens),
        ).model_dump()

    def _usage(self, completion_tokens: int) -> Usage:
        usage = self.account(completion_tokens)
        return Usage(prompt_tokens=usage.prompt_tokens, completion_tokens=usage.completion_tokens,
                     total_tokens=usage.total_tokens)
