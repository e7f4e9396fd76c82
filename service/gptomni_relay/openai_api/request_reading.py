"""Reading a chat completion request: size limit, JSON, schema, what we can honour, and
the conversation it carries (as the core's turns)."""

from __future__ import annotations

from typing import Any, TypeVar

import orjson
from fastapi import Request
from pydantic import BaseModel, ValidationError
from starlette.requests import ClientDisconnect

from gptomni_relay.core.byte_budget import Hold
from gptomni_relay.core.conversation import NonText, ToolCall, Turn
from gptomni_relay.core.shaping import AnswerShape, FunctionTool, JsonFormat, ToolChoice, tools_problem
from gptomni_relay.openai_api.errors import APIError, bad_request
from gptomni_relay.openai_api.request_bounds import (
    CHAT_COMPLETIONS_BOUNDS,
    RequestBounds,
    check_request_bounds,
    check_schema_bounds,
)
from gptomni_relay.openai_api.schemas import (
    ChatCompletionRequest,
    ChatMessage,
    ContentPart,
    JsonObjectFormat,
    JsonSchemaResponseFormat,
    NamedToolChoice,
    RefusalPart,
    ResponseFormat,
    TextPart,
)
from gptomni_relay.settings import RelaySettings
from gptomni_relay.state import SCHEMA_CHECKS

Body = TypeVar("Body", bound=BaseModel)


def _too_large(limit: int) -> APIError:
    return APIError(413, f"Request body is larger than the {limit}-byte limit.", code="request_too_large")


async def read_limited_body(request: Request, limit: int, hold: Hold) -> bytes:
    """The body, at most `limit` bytes, held in `hold` of the relay's body budget while it is
    read: each chunk before it is kept, never what a `Content-Length` only announces (64
    connections sending headers alone held the whole budget for the 30 s body timeout).
    The budget full: `ServerBusy` (503), and what was read so far is dropped. The caller
    ends the hold once the body is parsed (answering.py)."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise _too_large(limit)
    body = bytearray()
    try:
        async for chunk in request.stream():
            if len(body) + len(chunk) > limit:
                raise _too_large(limit)
            hold.cover(len(body) + len(chunk))
            body += chunk
    except ClientDisconnect:
        # Nobody will read the answer; counted as a hang-up (nginx's 499), not as a bad request.
        raise APIError(499, "The client disconnected while sending the request body.", code="client_disconnected") from None
    return bytes(body)


def param_name(loc: tuple[int | str, ...], data: Any, missing: bool) -> str | None:
    """`("messages", 0, "role")` -> `messages[0].role`, the way OpenAI names params.

    pydantic's error locations also name union branches (`str`, `list[...]`, a model's
    class name); only what exists in the request body is a param, so the location is
    walked through the body itself. A missing field is named although absent.
    """
    out = ""
    for position, part in enumerate(loc):
        if isinstance(part, int) and isinstance(data, list) and 0 <= part < len(data):
            out += f"[{part}]"
            data = data[part]
        elif isinstance(part, str) and isinstance(data, dict) and part in data:
            out += f".{part}" if out else part
            data = data[part]
        elif isinstance(part, str) and missing and position == len(loc) - 1:
            out += f".{part}" if out else part
    return out or None


def validated(raw: bytes, schema: type[Body], bounds: RequestBounds) -> Body:
    """The body as `schema`: a 400 naming the param, the way OpenAI names it, otherwise.
    Every body-taking route reads its body here: its `bounds` are checked before pydantic
    sees the body (request_bounds.py: what validation may cost)."""
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise bad_request("We could not parse the JSON body of your request: it is not valid UTF-8 JSON.",
                          code="invalid_json") from None
    if not isinstance(data, dict):
        raise bad_request("The request body must be a JSON object.", code="invalid_json")
    check_request_bounds(data, bounds)
    try:
        return schema.model_validate(data)
    except ValidationError as exc:
        # Of a union's failed branches, the deepest error says most: a text part without
        # its text, rather than "not a string" for the whole content.
        errors = exc.errors(include_input=False, include_url=False)
        worst = max(errors, key=lambda error: len(error["loc"]))
        param = param_name(tuple(worst["loc"]), data, missing=worst["type"] == "missing")
        raise bad_request(f"Invalid value for '{param or 'body'}': {worst['msg']}.", param=param) from None


def model_id(name: str, settings: RelaySettings) -> str:
    """The configured model id `name` stands for (an id or an alias); 404 otherwise."""
    model = settings.model_id(name)
    if model is None:
        raise APIError(404, f"The model '{name}' does not exist. Available: {', '.join(settings.model_names)}.",
                       param="model", code="model_not_found")
    return model


def parse_request(raw: bytes, settings: RelaySettings) -> ChatCompletionRequest:
    request = validated(raw, ChatCompletionRequest, CHAT_COMPLETIONS_BOUNDS)
    refuse_unsupported(request)
    model_id(request.model, settings)
    return request


def refuse_unsupported(request: ChatCompletionRequest) -> None:
    """A 400 naming the first param whose meaning the relay cannot honour: a 200 without
    what the client asked for would look like success."""
    if request.n is not None and request.n > 1:
        raise bad_request("Only n=1 is supported: GPT-Omni returns one answer per prompt.", param="n")
    if request.logit_bias:
        raise bad_request("logit_bias is not supported: GPT-Omni's web chat exposes no token probabilities.",
                          param="logit_bias")
    if request.logprobs:
        raise bad_request("logprobs is not supported: GPT-Omni's web chat exposes no token probabilities.",
                          param="logprobs")
    if request.top_logprobs:
        raise bad_request("top_logprobs is not supported: GPT-Omni's web chat exposes no token probabilities.",
                          param="top_logprobs")
    if request.modalities is not None and set(request.modalities) - {"text"}:
        raise bad_request("Only the text modality is supported: GPT-Omni's web chat answers text only.",
                          param="modalities")
    if request.audio is not None:
        raise bad_request("Audio output is not supported: GPT-Omni's web chat answers text only.", param="audio")
    if request.web_search_options is not None:
        raise bad_request("Web search is not supported by GPT-Omni's web chat.", param="web_search_options")
    if request.functions or request.function_call is not None:
        param = "functions" if request.functions else "function_call"
        raise bad_request("The legacy functions / function_call parameters are not supported: use tools and "
                          "tool_choice instead.", param=param)
    response_format = request.response_format
    format_schema = (response_format.json_schema.schema_ if isinstance(response_format, JsonSchemaResponseFormat)
                     else None)
    schemas = [(f"tools[{index}].function.parameters", tool.function.parameters)
               for index, tool in enumerate(request.tools or ()) if tool.function.parameters is not None]
    if format_schema is not None:
        schemas.append(("response_format.json_schema.schema", format_schema))
    check_schema_bounds(schemas)
    refuse_unusable_tools(request)
    if format_schema is not None and (problem := SCHEMA_CHECKS.problem(format_schema)):
        raise bad_request(f"Invalid JSON schema: {problem}.", param="response_format.json_schema.schema")


def stop_strings(stop: str | list[str] | None) -> tuple[str, ...]:
    return (stop,) if isinstance(stop, str) else tuple(stop or ())


def refuse_unusable_tools(request: ChatCompletionRequest) -> None:
    if not request.tools and request.tool_choice is None:
        return
    shape = answer_shape(request)
    problem = tools_problem(shape.tools, shape.tool_choice, SCHEMA_CHECKS.problem)
    if problem is not None:
        param = {"tools": "tools", "tool_choice": "tool_choice",
                 "name": f"tools[{problem.index}].function.name",
                 "parameters": f"tools[{problem.index}].function.parameters"}[problem.where]
        raise bad_request(problem.message, param=param)


def answer_shape(request: ChatCompletionRequest) -> AnswerShape:
    stops = stop_strings(request.stop)
    limits = [limit for limit in (request.max_tokens, request.max_completion_tokens) if limit is not None]
    tools = tuple(FunctionTool(tool.function.name, tool.function.description, tool.function.parameters)
                  for tool in request.tools or ())
    return AnswerShape(stops=stops, max_tokens=min(limits) if limits else None,
                       json_format=_json_format(request.response_format), tools=tools,
                       tool_choice=_tool_choice(request.tool_choice),
                       parallel_tool_calls=request.parallel_tool_calls is not False)


def _tool_choice(choice: str | NamedToolChoice | None) -> ToolChoice:
    if isinstance(choice, NamedToolChoice):
        return ToolChoice("required", choice.function.name)
    if choice == "none":
        return ToolChoice("none")
    return ToolChoice("required") if choice == "required" else ToolChoice("auto")


def _json_format(response_format: ResponseFormat | None) -> JsonFormat | None:
    if isinstance(response_format, JsonObjectFormat):
        return JsonFormat()
    if isinstance(response_format, JsonSchemaResponseFormat):
        spec = response_format.json_schema
        return JsonFormat(schema=spec.schema_ if spec.schema_ is not None else {}, name=spec.name,
                          description=spec.description)
    return None


def _part(part: ContentPart, role: str) -> str | NonText:
    """A part's text; an assistant's refusal is what it said. Anything else is refused by name."""
    if isinstance(part, TextPart):
        return part.text
    if isinstance(part, RefusalPart) and role == "assistant":
        return part.refusal
    return NonText(part.type)


def _turn(message: ChatMessage) -> Turn:
    content = message.content
    if content is None:
        parts: tuple[str | NonText, ...] = ()
    elif isinstance(content, str):
        parts = (content,)
    else:
        parts = tuple(_part(part, message.role) for part in content)
    if message.refusal and message.role == "assistant":
        parts = (*parts, message.refusal)
    calls = tuple(ToolCall(call.id, call.function.name, call.function.arguments) for call in message.tool_calls or ())
    return Turn(role=message.role, parts=parts, name=message.name, tool_calls=calls,
                tool_call_id=message.tool_call_id if message.role == "tool" else None)


def conversation(request: ChatCompletionRequest) -> list[Turn]:
    return [_turn(message) for message in request.messages]
