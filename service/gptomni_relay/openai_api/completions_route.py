"""POST /v1/completions, the legacy text completion (still what editor autocomplete
sends): one prompt, sent to GPT-Omni as written, its answer as text_completion objects.
The steps are the ones every answering route shares (answering.py)."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from gptomni_relay.core.conversation import Turn
from gptomni_relay.core.shaping import AnswerShape, FinishReason, ShapedAnswer
from gptomni_relay.metrics import RelayMetrics
from gptomni_relay.openai_api.answer_writer import AnswerWriter, PieceTemplate
from gptomni_relay.openai_api.answering import Asked, answer
from gptomni_relay.openai_api.completions_schemas import CompletionChoice, CompletionRequest, TextCompletion
from gptomni_relay.openai_api.errors import APIError, bad_request
from gptomni_relay.openai_api.event_stream import sse_data, sse_event
from gptomni_relay.openai_api.request_bounds import COMPLETIONS_BOUNDS
from gptomni_relay.openai_api.request_reading import model_id, stop_strings, validated
from gptomni_relay.openai_api.schemas import Usage
from gptomni_relay.settings import RelaySettings

_NO_PROBABILITIES = "GPT-Omni's web chat exposes no token probabilities."


def refuse_unsupported(request: CompletionRequest) -> str:
    """The one prompt to send; a 400 naming the first param the relay cannot honour."""
    prompt = request.prompt
    if isinstance(prompt, list):
        if len(prompt) != 1 or not isinstance(prompt[0], str):
            raise bad_request("prompt must be one string (or a list of exactly one string): several prompts would "
                              "be several answers (n > 1), and token-id prompts need OpenAI's tokenizer.",
                              param="prompt")
        prompt = prompt[0]
    if request.n is not None and request.n > 1:
        raise bad_request("Only n=1 is supported: GPT-Omni returns one answer per prompt.", param="n")
    if request.best_of is not None and request.best_of > 1:
        raise bad_request("best_of > 1 is not supported: GPT-Omni returns one answer per prompt.", param="best_of")
    if request.echo:
        raise bad_request("echo is not supported by this relay.", param="echo")
    if request.suffix:
        raise bad_request("suffix (insertion) is not supported: GPT-Omni's web chat only continues a prompt.",
                          param="suffix")
    if request.logprobs is not None:
        raise bad_request(f"logprobs is not supported: {_NO_PROBABILITIES}", param="logprobs")
    if request.logit_bias:
        raise bad_request(f"logit_bias is not supported: {_NO_PROBABILITIES}", param="logit_bias")
    return prompt


class CompletionsSurface:
    log_message = "completion finished"
    conversation_param = "prompt"

    def read(self, raw: bytes, settings: RelaySettings) -> Asked:
        body = validated(raw, CompletionRequest, COMPLETIONS_BOUNDS)
        prompt = refuse_unsupported(body)
        model = model_id(body.model, settings)
        shape = AnswerShape(stops=stop_strings(body.stop), max_tokens=body.max_tokens)
        # The prompt alone, as one user turn: folded, it goes to GPT-Omni verbatim.
        return Asked(model, bool(body.stream), shape, [Turn("user", (prompt,))], body)

    def writer(self, metrics: RelayMetrics, asked: Asked, prompt_tokens: int, started: float,
               api_key: str) -> CompletionsWriter:
        return CompletionsWriter(metrics, asked, prompt_tokens, started, api_key)


class CompletionsWriter(AnswerWriter):
    log_message = "completion finished"

    def __init__(self, metrics: RelayMetrics, asked: Asked, prompt_tokens: int, started: float, api_key: str) -> None:
        super().__init__(metrics, asked.model, asked.stream, prompt_tokens, started, api_key,
                         f"cmpl-{uuid.uuid4().hex}")
        self._body: CompletionRequest = asked.body
        options = self._body.stream_options
        self._include_usage = options is not None and options.include_usage

    def _object(self, choices: list[CompletionChoice], usage: Usage | None = None) -> TextCompletion:
        return TextCompletion(id=self.id, created=self.created, model=self._body.model, choices=choices, usage=usage)

    def _chunk(self, text: str, finish_reason: FinishReason | None = None) -> bytes:
        chunk = self._object([CompletionChoice(text=text, finish_reason=finish_reason)])
        return sse_event(chunk, exclude=None if self._include_usage else {"usage"})

    def _usage(self, completion_tokens: int) -> Usage:
        usage = self.account(completion_tokens)
        return Usage(prompt_tokens=usage.prompt_tokens, completion_tokens=usage.completion_tokens,
                     total_tokens=usage.total_tokens)

    def opening(self, first: str) -> bytes:
        return self._chunk(first)

    def piece_renderer(self) -> Callable[[str], bytes]:
        return PieceTemplate(self._chunk).event

    def closing(self, finish_reason: FinishReason, completion_tokens: int) -> bytes:  # type: ignore[override]
        closing = [self._chunk("", finish_reason)]
        usage = self._usage(completion_tokens)
        if self._include_usage:
            closing.append(sse_event(self._object([], usage)))
        closing.append(sse_data(b"[DONE]"))
        return b"".join(closing)

    def failure(self, error: APIError) -> bytes:
        return sse_event(error.body())

    def shaped_events(self, shaped: ShapedAnswer) -> Iterator[bytes]:
        yield self._chunk(shaped.content or "")
        yield self.closing(shaped.finish_reason, shaped.completion_tokens)

    def whole_object(self, shaped: ShapedAnswer) -> dict[str, Any]:
        finish_reason: FinishReason = "length" if shaped.finish_reason == "length" else "stop"
        choice = CompletionChoice(text=shaped.content or "", finish_reason=finish_reason)
        return self._object([choice], self._usage(shaped.completion_tokens)).model_dump()


_SURFACE = CompletionsSurface()


async def completions(request: Request) -> Response:
    return await answer(request, _SURFACE)


route = Route("/v1/completions", completions, methods=["POST"])
