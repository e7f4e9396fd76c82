"""Function tools, emulated: what GPT-Omni is told about them, and the calls read back
from what it writes (docs/prompt-format.md, "Tool calls").

The model is told one exact form (`<tool_call>{"name": ..., "arguments": {...}}</tool_call>`,
the form the history shows it too: core/conversation.py), and the reader tolerates the
forms a web model writes instead: other tags, fenced ```json blocks, bare JSON, a list of
calls, `{"function": {...}}` or `"parameters"` for `"arguments"`, arguments as a JSON
string, prose around the calls (kept as the answer's text).

Whatever the form, a call is used only if it names an offered tool, its arguments are a
JSON object that matches the tool's schema, and the answer keeps to `tool_choice` and
`parallel_tool_calls`; otherwise the answer is unusable (`UnusableAnswer`), and is asked
again on the attempt budget.
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from gptomni_relay.core.conversation import TOOL_CALL_TAG, ToolCall, render_tool_call
from gptomni_relay.core.errors import UnusableAnswer
from gptomni_relay.core.shaping.extraction import FENCE_OPENING, Found, bare_values, json_values, parse_json, tagged
from gptomni_relay.core.shaping.schemas import answer_deadline, first_violation
from gptomni_relay.core.shaping.shape import AnswerShape, FunctionTool, ShapedAnswer, ToolChoice

MAX_TOOLS = 128  # OpenAI's own limit per request
INVALID_TOOL_CALL = "invalid_tool_call"
_ARGUMENT_KEYS = ("arguments", "parameters", "args", "input")
_CALL_KEYS = frozenset({"name", "id", "type", "function", *_ARGUMENT_KEYS})


@dataclass(frozen=True)
class ToolsProblem:
    """Why the tools of a request cannot be honoured; `where` and `index` say which param,
    for the surface to name in its own terms (chat: `tools[i].function.parameters`)."""

    message: str
    where: Literal["tools", "name", "parameters", "tool_choice"]
    index: int | None = None


def tools_problem(tools: Sequence[FunctionTool], choice: ToolChoice,
                  schema_problem: Callable[[Mapping[str, Any]], str | None]) -> ToolsProblem | None:
    """Tools the relay cannot describe or check (too many, a name twice, a schema that is
    invalid or too large: `schema_problem`, e.g. state.SCHEMA_CHECKS.problem), and a
    tool_choice that names no offered tool or requires a call without tools."""
    if len(tools) > MAX_TOOLS:
        return ToolsProblem(f"At most {MAX_TOOLS} tools are allowed; the request has {len(tools)}.", "tools")
    names: set[str] = set()
    for index, tool in enumerate(tools):
        if tool.name in names:
            return ToolsProblem(f"The tool name '{tool.name}' is given twice.", "name", index)
        names.add(tool.name)
        if tool.parameters is not None and (problem := schema_problem(tool.parameters)):
            return ToolsProblem(f"Invalid JSON schema for the tool's parameters: {problem}.", "parameters", index)
    if choice.name is not None and choice.name not in names:
        return ToolsProblem(f"tool_choice names the function '{choice.name}', which is not in tools.", "tool_choice")
    if choice.mode == "required" and not tools:
        return ToolsProblem("tool_choice 'required' needs at least one tool in tools.", "tool_choice")
    return None


def tool_instructions(shape: AnswerShape) -> str:
    lines = ["You can call these tools (functions). Each is listed with the JSON schema of its arguments:"]
    for tool in shape.tools:
        described = f": {tool.description}" if tool.description else ""
        schema = json.dumps(tool.parameters or {"type": "object"}, ensure_ascii=False)
        lines.append(f"- {tool.name}{described}\n  arguments schema: {schema}")
    example = render_tool_call("TOOL_NAME", '{"ARGUMENT": "VALUE"}')
    lines += ["", "To call a tool, write exactly this and nothing else, one line per call:", example,
              "with the tool's name and its arguments as a JSON object matching its schema. "
              "The result comes back to you in a `Tool result` turn."]
    choice = shape.tool_choice
    if choice.name is not None:
        lines.append(f"You must call the tool `{choice.name}` now: answer with exactly one call to it and no other text.")
    elif choice.mode == "required":
        lines.append(f"You must call at least one tool now: answer with <{TOOL_CALL_TAG}> lines only.")
    else:
        lines.append(f"Call a tool only when you need one; otherwise answer in plain text, without <{TOOL_CALL_TAG}>.")
    if choice.name is None:
        lines.append("You may call several tools at once, one line each." if shape.parallel_tool_calls
                     else "Call at most one tool in your answer.")
    return "\n".join(lines)


def _as_call(value: Any) -> tuple[Any, Any] | None:
    """(name, arguments) if `value` has the shape of one call, else None."""
    if not isinstance(value, dict):
        return None
    if isinstance(value.get("function"), dict):  # OpenAI's own {"type": "function", "function": {...}}
        value = value["function"]
    name = value.get("name")
    if not isinstance(name, str) or not set(value) <= _CALL_KEYS:
        return None
    arguments = next((value[key] for key in _ARGUMENT_KEYS if key in value), {})
    return name, arguments


def _calls_in(value: Any) -> list[tuple[Any, Any]] | None:
    if isinstance(value, dict) and isinstance(value.get("tool_calls"), list) and len(value) == 1:
        value = value["tool_calls"]
    if isinstance(value, list):
        calls = [_as_call(item) for item in value]
        return calls if calls and all(call is not None for call in calls) else None  # type: ignore[return-value]
    call = _as_call(value)
    return [call] if call is not None else None


def _located_calls(text: str) -> tuple[list[tuple[Any, Any]], list[Found]]:
    """The calls in `text` and where they stand: tagged ones if any tag is there (a tag
    that holds no call is itself a mistake), else fenced ones, else bare ones."""
    tags = tagged(text)
    if tags:
        calls: list[tuple[Any, Any]] = []
        for found in tags:
            in_tag = _calls_in(found.value) if found.text is not None else None
            if in_tag is None:
                raise UnusableAnswer(f"a <{TOOL_CALL_TAG}> block does not hold a call as JSON "
                                     '{"name": ..., "arguments": {...}}', code=INVALID_TOOL_CALL)
            calls += in_tag
        return calls, tags
    for candidates in (json_values(text), bare_values(text)):
        places = [(found, in_found) for found in candidates if (in_found := _calls_in(found.value)) is not None]
        if places:
            return [call for _, in_found in places for call in in_found], [found for found, _ in places]
    return [], []


def _arguments(tool: FunctionTool, arguments: Any, deadline: float) -> str:
    if isinstance(arguments, str):
        try:
            arguments = parse_json(arguments)
        except (ValueError, RecursionError):
            raise UnusableAnswer(f"the arguments of the call to `{tool.name}` are not JSON",
                                 code=INVALID_TOOL_CALL) from None
    if not isinstance(arguments, dict):
        raise UnusableAnswer(f"the arguments of the call to `{tool.name}` are not a JSON object", code=INVALID_TOOL_CALL)
    if tool.parameters is not None and (violation := first_violation(tool.parameters, arguments, deadline)):
        raise UnusableAnswer(f"the arguments of the call to `{tool.name}` do not match its schema: {violation}",
                             code=INVALID_TOOL_CALL)
    return json.dumps(arguments, ensure_ascii=False)


# A call read as a bare value inside a fence (the fence could not be read whole because an
# argument holds ```) takes its fence with it: the fence alone is no text to pass on.
# Looked for within a few characters of the call, so the look costs nothing on long text.
_FENCE_OPENING_BEFORE = re.compile(FENCE_OPENING + r"\s*\Z")
_FENCE_CLOSING_AFTER = re.compile(r"\s*```")
_FENCE_LOOK = 64


def _with_its_fence(text: str, found: Found) -> tuple[int, int]:
    window_start = max(found.start - _FENCE_LOOK, 0)
    opening = _FENCE_OPENING_BEFORE.search(text, window_start, found.start)
    closing = _FENCE_CLOSING_AFTER.match(text, found.end, found.end + _FENCE_LOOK)
    if opening is None or closing is None:
        return found.start, found.end
    return opening.start(), closing.end()


def _remaining_text(text: str, places: list[Found]) -> str | None:
    kept, position = [], 0
    for found in sorted(places, key=lambda found: found.start):
        start, end = _with_its_fence(text, found)
        kept.append(text[position:start])
        position = max(position, end)
    kept.append(text[position:])
    remaining = "\n".join(part.strip() for part in kept if part.strip())
    return remaining or None


def read_tool_calls(shape: AnswerShape, text: str, tokens: int) -> ShapedAnswer | None:
    """The calls in GPT-Omni's answer as the client gets them; None when the answer calls
    no tool and `tool_choice` lets it answer in text. Raises UnusableAnswer, with the
    answer to send when the attempts run out where one is acceptable: the first call when
    only one was allowed; with `tool_choice: auto` (an answer in text is allowed) the text
    GPT-Omni wrote, finish_reason "stop"."""
    try:
        return _read(shape, text, tokens)
    except UnusableAnswer as exc:
        if exc.fallback is None and shape.tool_choice.mode == "auto" and shape.json_format is None:
            exc.fallback = ShapedAnswer(text, (), "stop", tokens)
        raise


def _read(shape: AnswerShape, text: str, tokens: int) -> ShapedAnswer | None:
    calls, places = _located_calls(text)
    choice = shape.tool_choice
    if not calls:
        if choice.mode == "auto":
            return None
        wanted = f"call to `{choice.name}`" if choice.name else "tool call"
        raise UnusableAnswer(f"the answer holds no {wanted}, and tool_choice requires one", code=INVALID_TOOL_CALL)
    tools: Mapping[str, FunctionTool] = {tool.name: tool for tool in shape.tools}
    shaped: list[ToolCall] = []
    deadline = answer_deadline()
    for name, arguments in calls:
        tool = tools.get(name)
        if tool is None:
            raise UnusableAnswer(f"the answer calls `{name}`, which is not one of the tools ({', '.join(tools)})",
                                 code=INVALID_TOOL_CALL)
        if choice.name is not None and name != choice.name:
            raise UnusableAnswer(f"the answer calls `{name}`, but tool_choice requires `{choice.name}`",
                                 code=INVALID_TOOL_CALL)
        shaped.append(ToolCall(f"call_{uuid.uuid4().hex[:24]}", name, _arguments(tool, arguments, deadline)))
    content = _remaining_text(text, places)
    if len(shaped) > 1 and (not shape.parallel_tool_calls or choice.name is not None):
        # One call is what was allowed: when asking again does not get one, the first is.
        first = ShapedAnswer(content, tuple(shaped[:1]), "tool_calls", tokens)
        raise UnusableAnswer(f"the answer makes {len(shaped)} calls, but only one is allowed",
                             code=INVALID_TOOL_CALL, fallback=first)
    return ShapedAnswer(content, tuple(shaped), "tool_calls", tokens)

