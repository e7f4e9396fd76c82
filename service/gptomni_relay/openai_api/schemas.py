"""OpenAI wire formats: the requests we accept and the objects we answer with."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

# --- requests --------------------------------------------------------------------


# `stop` of chat and legacy completions: one string or a list (at most four, counted
# before validation with every other count: request_bounds.MAX_STOP_SEQUENCES).
StopSequences = str | list[str] | None


class TextPart(BaseModel):
    type: Literal["text"]
    text: str


class RefusalPart(BaseModel):
    """What an earlier assistant turn refused with: part of the conversation, as its text."""

    type: Literal["refusal"]
    refusal: str


class OtherPart(BaseModel):
    """Any non-text part (image_url, input_audio, file, ...): parsed so we can refuse it by name."""

    model_config = ConfigDict(extra="allow")
    type: str

    @field_validator("type")
    @classmethod
    def _not_text(cls, kind: str) -> str:
        # A text or refusal part that failed its own rules is not "another kind".
        if kind in ("text", "refusal"):
            raise ValueError(f"a {kind} part needs a string '{kind}'")
        return kind


ContentPart = Annotated[TextPart | RefusalPart | OtherPart, Field(union_mode="left_to_right")]


class FunctionCall(BaseModel):
    model_config = ConfigDict(extra="ignore")
    name: str
    arguments: str


class MessageToolCall(BaseModel):
    """A tool call in an assistant message of the history (one the relay answered before)."""

    model_config = ConfigDict(extra="ignore")
    id: str
    type: Literal["function"] = "function"
    function: FunctionCall


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="ignore")

    role: Literal["system", "developer", "user", "assistant", "tool", "function"]
    content: str | list[ContentPart] | None = None
    refusal: str | None = None  # an earlier assistant turn's refusal (OpenAI answers one here)
    name: str | None = None
    tool_calls: list[MessageToolCall] | None = None
    tool_call_id: str | None = None


class FunctionDefinition(BaseModel):
    model_config = ConfigDict(extra="ignore")
    name: str = Field(pattern=r"^[a-zA-Z0-9_-]{1,64}$")
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None


class FunctionTool(BaseModel):
    model_config = ConfigDict(extra="ignore")
    type: Literal["function"]
    function: FunctionDefinition


class NamedFunction(BaseModel):
    name: str


class NamedToolChoice(BaseModel):
    model_config = ConfigDict(extra="ignore")
    type: Literal["function"]
    function: NamedFunction


class JsonSchemaFormat(BaseModel):
    model_config = ConfigDict(extra="ignore")
    name: str = Field(pattern=r"^[a-zA-Z0-9_-]{1,64}$")
    description: str | None = None
    schema_: dict[str, Any] | None = Field(None, alias="schema")
    strict: bool | None = None


class TextFormat(BaseModel):
    type: Literal["text"]


class JsonObjectFormat(BaseModel):
    type: Literal["json_object"]


class JsonSchemaResponseFormat(BaseModel):
    type: Literal["json_schema"]
    json_schema: JsonSchemaFormat


ResponseFormat = Annotated[TextFormat | JsonObjectFormat | JsonSchemaResponseFormat, Field(discriminator="type")]


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="ignore")
    include_usage: bool = False


class TemperatureAndTopP(BaseModel):
    """Sampling knobs the web chat lacks: accepted and ignored, but only in OpenAI's ranges,
    so a client's mistake (`temperature: "hot"`, `top_p: 5`) is its 400, as at OpenAI."""

    temperature: float | None = Field(None, ge=0, le=2, allow_inf_nan=False)
    top_p: float | None = Field(None, ge=0, le=1, allow_inf_nan=False)


class SamplingKnobs(TemperatureAndTopP):
    """The knobs chat and legacy completions share beyond Responses' two."""

    presence_penalty: float | None = Field(None, ge=-2, le=2, allow_inf_nan=False)
    frequency_penalty: float | None = Field(None, ge=-2, le=2, allow_inf_nan=False)
    seed: int | None = None


class ChatCompletionRequest(SamplingKnobs):
    """What chat completions honours (docs/prompt-format.md): `stop`, `max_tokens` /
    `max_completion_tokens`, function `tools` with `tool_choice` and `parallel_tool_calls`,
    `response_format`. Sampling knobs the web chat lacks (temperature, top_p, seed,
    penalties, ...: SamplingKnobs checks their ranges) and bookkeeping fields (user, store,
    metadata) are accepted and ignored: ignoring them cannot change what the answer is.
    What would (logprobs, logit_bias, n > 1, audio) is refused by
    request_reading.refuse_unsupported. Unknown fields are ignored."""

    model_config = ConfigDict(extra="allow")

    model: str = Field(min_length=1)
    # The first bad message ends validation (request_bounds.py caps the counts before it).
    messages: list[ChatMessage] = Field(min_length=1, fail_fast=True)
    stream: bool | None = False
    stream_options: StreamOptions | None = None
    n: int | None = Field(None, ge=1)
    stop: StopSequences = None
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    tools: list[FunctionTool] | None = None
    tool_choice: Literal["none", "auto", "required"] | NamedToolChoice | None = None
    parallel_tool_calls: bool | None = None
    response_format: ResponseFormat | None = None
    functions: list[Any] | None = None
    function_call: Any = None
    logit_bias: dict[str, Any] | None = None
    logprobs: bool | None = None
    top_logprobs: int | None = None
    modalities: list[str] | None = None
    audio: Any = None
    web_search_options: Any = None
    user: str | None = None


# --- responses -------------------------------------------------------------------


def _is_none(value: object) -> bool:
    return value is None



class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


FinishReason = Literal["stop", "length", "tool_calls"]


class ToolCallOut(BaseModel):
    id: str
    type: Literal["function"] = "function"
    function: FunctionCall


class AssistantMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str | None
    refusal: None = None
    tool_calls: list[ToolCallOut] | None = Field(None, exclude_if=_is_none)


class Choice(BaseModel):
    index: int = 0
    message: AssistantMessage
    finish_reason: FinishReason = "stop"
    logprobs: None = None


class ChatCompletion(BaseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[Choice]
    usage: Usage
    system_fingerprint: None = None


class FunctionCallDelta(BaseModel):
    name: str | None = Field(None, exclude_if=_is_none)
    arguments: str


class ToolCallDelta(BaseModel):
    """A streamed tool call: the first delta of call `index` carries its id, type and name;
    the SDKs join the `arguments` of every delta with that index."""

    index: int
    id: str | None = Field(None, exclude_if=_is_none)
    type: Literal["function"] | None = Field(None, exclude_if=_is_none)
    function: FunctionCallDelta


class Delta(BaseModel):
    """OpenAI omits absent delta fields rather than sending nulls."""

    role: Literal["assistant"] | None = Field(None, exclude_if=_is_none)
    content: str | None = Field(None, exclude_if=_is_none)
    tool_calls: list[ToolCallDelta] | None = Field(None, exclude_if=_is_none)


class ChunkChoice(BaseModel):
    index: int = 0
    delta: Delta
    finish_reason: FinishReason | None = None
    logprobs: None = None


class ChatCompletionChunk(BaseModel):
    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int
    model: str
    choices: list[ChunkChoice]
    usage: Usage | None = None
    system_fingerprint: None = None


class Model(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "gptomni"


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[Model]


class ErrorBody(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ErrorResponse(BaseModel):
    error: ErrorBody
