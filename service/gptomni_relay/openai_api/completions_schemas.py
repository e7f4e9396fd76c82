"""Wire formats of the legacy `POST /v1/completions` (text_completion objects)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from gptomni_relay.openai_api.schemas import SamplingKnobs, StopSequences, StreamOptions, Usage


class CompletionRequest(SamplingKnobs):
    """What legacy completions honours: one prompt, `stop`, `max_tokens`, `stream` with
    `stream_options.include_usage`. Sampling knobs (temperature, top_p, penalties, seed:
    SamplingKnobs checks their ranges) and `user` are accepted and ignored; what would
    change the answer's meaning (echo, suffix, logprobs, best_of / n > 1, several prompts,
    token-id prompts, logit_bias) is refused by completions_route.refuse_unsupported."""

    model_config = ConfigDict(extra="allow")

    model: str = Field(min_length=1)
    prompt: str | list[str] | list[int] | list[list[int]]
    stream: bool | None = False
    stream_options: StreamOptions | None = None
    max_tokens: int | None = Field(None, ge=1)
    stop: StopSequences = None
    n: int | None = Field(None, ge=1)
    best_of: int | None = Field(None, ge=1)
    echo: bool | None = None
    suffix: str | None = None
    logprobs: int | None = None
    logit_bias: dict[str, Any] | None = None


FinishReason = Literal["stop", "length"]


class CompletionChoice(BaseModel):
    text: str
    index: int = 0
    logprobs: None = None
    finish_reason: FinishReason | None = None


class TextCompletion(BaseModel):
    """The non-streamed answer and, with `finish_reason` null until the last, each chunk."""

    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int
    model: str
    choices: list[CompletionChoice]
    usage: Usage | None = None
    system_fingerprint: None = None
