"""Reading a Responses request: what it asks of the answer (an AnswerShape, for the shaping
core), the conversation it carries (as the core's turns), and a 400 naming the param for
anything the relay cannot honour. What is honoured, emulated, ignored and refused, and
why: docs/responses.md."""

from __future__ import annotations

from gptomni_relay.core.conversation import ToolCall, Turn
from gptomni_relay.core.shaping import AnswerShape, FunctionTool, JsonFormat, ToolChoice, tools_problem
from gptomni_relay.openai_api.errors import bad_request
from gptomni_relay.openai_api.request_bounds import check_schema_bounds
from gptomni_relay.openai_api.responses_schemas import (
    FunctionCallItem,
    FunctionCallOutputItem,
    FunctionToolSpec,
    InputPart,
    MessageItem,
    OtherTool,
    RefusalInputPart,
    ResponsesRequest,
    TextFormatJsonObject,
    TextFormatJsonSchema,
    TextInputPart,
    ToolChoiceObject,
)
from gptomni_relay.state import SCHEMA_CHECKS

# Items a client sends back from an earlier response that carry nothing the web chat can
# use: a reasoning item is the model's own hidden thinking (the relay never makes one).
_SKIPPED_ITEMS = {"reasoning"}
_NO_STATE = "the relay keeps no responses (every replica answers alike, nothing is stored)"


def refuse_unsupported(request: ResponsesRequest) -> None:
    """A 400 naming the first param whose meaning the relay cannot honour."""
    if request.previous_response_id is not None:
        raise bad_request(f"previous_response_id is not supported: {_NO_STATE}; send the whole conversation "
                          "in input instead.", param="previous_response_id")
    if request.conversation is not None:
        raise bad_request(f"conversation is not supported: {_NO_STATE}.", param="conversation")
    if request.background:
        raise bad_request(f"background responses are not supported: {_NO_STATE}.", param="background")
    if request.prompt is not None:
        raise bad_request("Stored prompt templates are not supported: send instructions and input instead.",
                          param="prompt")
    if request.top_logprobs:
        raise bad_request("top_logprobs is not supported: GPT-Omni's web chat exposes no token probabilities.",
                          param="top_logprobs")
    for index, included in enumerate(request.include or ()):
        if "logprobs" in included:
            raise bad_request("Log probabilities are not supported: GPT-Omni's web chat exposes none.",
                              param=f"include[{index}]")


def _part_text(part: InputPart, param: str, role: str) -> str:
    """A part's text; an assistant's refusal is what it said. Anything else is refused by name."""
    if isinstance(part, TextInputPart):
        return part.text
    if isinstance(part, RefusalInputPart) and role == "assistant":
        return part.refusal
    raise bad_request(f"Content parts of type '{part.type}' are not supported: GPT-Omni's web chat takes text "
                      "only.", param=f"{param}.type", code="unsupported_content")


def _texts(content: str | list[InputPart], param: str, role: str) -> tuple[str, ...]:
    if isinstance(content, str):
        return (content,)
    return tuple(_part_text(part, f"{param}[{index}]", role) for index, part in enumerate(content))


def conversation(request: ResponsesRequest) -> list[Turn]:
    turns = [Turn("system", (request.instructions,))] if request.instructions else []
    if isinstance(request.input, str):
        return [*turns, Turn("user", (request.input,))]
    for index, item in enumerate(request.input):
        param = f"input[{index}]"
        if isinstance(item, MessageItem):
            turns.append(Turn(item.role, _texts(item.content, f"{param}.content", item.role)))
        elif isinstance(item, FunctionCallItem):
            call = ToolCall(item.call_id, item.name, item.arguments)
            previous = turns[-1] if turns else None
            if previous is not None and previous.role == "assistant" and previous.tool_calls:
                # Parallel calls arrive as consecutive items: one assistant turn, as in chat.
                turns[-1] = Turn("assistant", previous.parts, tool_calls=(*previous.tool_calls, call))
            else:
                turns.append(Turn("assistant", (), tool_calls=(call,)))
        elif isinstance(item, FunctionCallOutputItem):
            turns.append(Turn("tool", _texts(item.output, f"{param}.output", "tool"), tool_call_id=item.call_id))
        elif item.type not in _SKIPPED_ITEMS:
            raise bad_request(f"Input items of type '{item.type}' are not supported by this relay.",
                              param=f"{param}.type")
    return turns


def _function_tools(request: ResponsesRequest) -> tuple[tuple[FunctionTool, ...], list[int]]:
    """The function tools, and where each is in the request's `tools` (for the param's name)."""
    tools: list[FunctionTool] = []
    positions: list[int] = []
    for index, tool in enumerate(request.tools or ()):
        if isinstance(tool, FunctionToolSpec):
            tools.append(FunctionTool(tool.name, tool.description, tool.parameters))
            positions.append(index)
    return tuple(tools), positions


def _tool_choice(request: ResponsesRequest, tools: tuple[FunctionTool, ...]) -> ToolChoice:
    """Tools of other kinds (built-in: web_search, file_search, mcp...; custom, namespace)
    are never offered to the model: with `auto` or `none` its answer is one a model that
    chose not to call them would give. A choice that would force one is refused."""
    choice = request.tool_choice
    others = [(index, tool.type) for index, tool in enumerate(request.tools or ()) if isinstance(tool, OtherTool)]
    if isinstance(choice, ToolChoiceObject):
        if choice.type != "function":
            raise bad_request(f"tool_choice of type '{choice.type}' is not supported: only function tools can be "
                              "called through GPT-Omni's web chat.", param="tool_choice")
        if choice.name is None:
            raise bad_request("tool_choice of type 'function' needs the function's name.", param="tool_choice.name")
        return ToolChoice("required", choice.name)
    mode = choice or "auto"
    if request.max_tool_calls == 0:
        mode = "none"
    if mode == "required" and not tools and others:
        index, kind = others[0]
        raise bad_request(f"Tools of type '{kind}' are not supported (only function tools can be called through "
                          "GPT-Omni's web chat), and tool_choice 'required' would need one.",
                          param=f"tools[{index}].type")
    return ToolChoice(mode)


def _json_format(request: ResponsesRequest) -> JsonFormat | None:
    fmt = request.text.format if request.text is not None else None
    if isinstance(fmt, TextFormatJsonObject):
        return JsonFormat()
    if isinstance(fmt, TextFormatJsonSchema):
        if problem := SCHEMA_CHECKS.problem(fmt.schema_):
            raise bad_request(f"Invalid JSON schema: {problem}.", param="text.format.schema")
        return JsonFormat(schema=fmt.schema_, name=fmt.name, description=fmt.description)
    return None


def answer_shape(request: ResponsesRequest) -> AnswerShape:
    tools, positions = _function_tools(request)
    fmt = request.text.format if request.text is not None else None
    schemas = [(f"tools[{position}].parameters", tool.parameters)
               for tool, position in zip(tools, positions, strict=True) if tool.parameters is not None]
    if isinstance(fmt, TextFormatJsonSchema):
        schemas.append(("text.format.schema", fmt.schema_))
    check_schema_bounds(schemas)
    choice = _tool_choice(request, tools)
    if problem := tools_problem(tools, choice, SCHEMA_CHECKS.problem):
        where = {"tools": "tools", "tool_choice": "tool_choice"}
        param = where.get(problem.where) or f"tools[{positions[problem.index or 0]}].{problem.where}"
        raise bad_request(problem.message, param=param)
    parallel = request.parallel_tool_calls is not False and request.max_tool_calls != 1
    return AnswerShape(max_tokens=request.max_output_tokens, tools=tools, tool_choice=choice,
                       parallel_tool_calls=parallel, json_format=_json_format(request))
