"""The tool-call reader and the schema checks on their own (core/shaping), beside the
end-to-end tests in test_tool_calls.py: forms too many to script through the relay, the
bounds on hostile text, and the remembered schema verdicts."""

from __future__ import annotations

import time

import pytest

from gptomni_relay.core.errors import UnusableAnswer
from gptomni_relay.core.shaping import AnswerShape, FunctionTool, ToolChoice, interpret
from gptomni_relay.core.shaping.schemas import MAX_SCHEMA_BYTES, MAX_VALUE_DEPTH, SchemaChecks, schema_problem

TOOLS = (FunctionTool("f", None, {"type": "object", "properties": {"n": {"type": "integer"}}}), FunctionTool("g"))


def calls(text: str, **shape: object) -> list[tuple[str, str]]:
    answer = interpret(AnswerShape(tools=TOOLS, **shape), text)  # type: ignore[arg-type]
    return [(call.name, call.arguments) for call in answer.tool_calls]


@pytest.mark.parametrize(("text", "expected"), [
    ('{"tool_calls": [{"name": "f", "arguments": {"n": 1}}]}', [("f", '{"n": 1}')]),
    ('<tool_calls>[{"name": "f", "args": {"n": 2}}, {"name": "g", "input": {}}]</tool_calls>',
     [("f", '{"n": 2}'), ("g", "{}")]),
    ('```\n{"name": "g"}\n```', [("g", "{}")]),
    ('Example of data: {"name": "Bob", "age": 3}', []),  # not a call: a name and other keys
    ('{"name": "f", "arguments": {"n": 1}', []),  # broken JSON: no call, the text stands
])
def test_forms(text: str, expected: list[tuple[str, str]]) -> None:
    assert calls(text) == expected


@pytest.mark.parametrize(("text", "content"), [
    # An argument holding ``` ends the fence early, so the call is read as a bare value:
    # its fence goes with it, the words around stay.
    ('I will write it.\n```json\n{"name": "g", "arguments": {"text": "see ```py\\nx\\n``` here"}}\n```\nDone.',
     "I will write it.\nDone."),
    ('```json\n{"name": "g", "arguments": {"text": "a ``` b"}}\n```', None),
    ('Run ```ls``` first. {"name": "g", "arguments": {}} then ```cat```', "Run ```ls``` first.\nthen ```cat```"),
])
def test_a_call_read_out_of_its_fence_leaves_no_empty_fence(text: str, content: str | None) -> None:
    answer = interpret(AnswerShape(tools=TOOLS), text)
    assert [call.name for call in answer.tool_calls] == ["g"]
    assert answer.content == content


def test_a_tag_without_a_call_is_a_mistake_not_text() -> None:
    with pytest.raises(UnusableAnswer) as caught:
        calls("<tool_call>I think f</tool_call>", tool_choice=ToolChoice("required"))
    assert caught.value.code == "invalid_tool_call" and caught.value.fallback is None


@pytest.mark.parametrize("text", [
    "[1, " * 100_000,  # nested past the decoder's recursion limit
    '{"a": 1, ' * 100_000,  # from each opening the parse runs to the end, then fails
], ids=["deep", "long"])
def test_hostile_text_is_read_in_bounded_time(text: str) -> None:
    started = time.process_time()
    assert calls(text) == []
    assert time.process_time() - started < 5  # 64 openings tried, not 100 000 (quadratic: hours)


def test_remembered_verdicts_match_and_stay_bounded() -> None:
    checks = SchemaChecks(max_entries=2)
    schemas = [{"type": "object"}, {"type": "nonsense"}, {"type": "string"}]
    for schema in schemas * 2:
        assert checks.problem(schema) == schema_problem(schema)
    assert len(checks._verdicts) == 2
    huge = {"description": "x" * MAX_SCHEMA_BYTES}
    assert "byte limit" in (checks.problem(huge) or "")


def test_history_arguments_nested_past_the_decoder_are_quoted_as_sent() -> None:
    from gptomni_relay.core.conversation import render_tool_call

    deep = "[" * 100_000
    assert render_tool_call("f", deep).startswith('<tool_call>{"name": "f", "arguments": "[[[')


@pytest.mark.parametrize("levels", [65, 200, 900])
def test_arguments_nested_deep_are_unusable_not_a_crash(levels: int) -> None:
    # 200 levels against a $ref schema used to end in rpds' PanicException (a RecursionError
    # raised inside its map lookup), which no `except Exception` catches.
    nested = {"type": "array", "items": {"$ref": "#/$defs/nested"}}
    tool = FunctionTool("f", None, {"type": "object", "properties": {"n": {"$ref": "#/$defs/nested"}},
                                    "$defs": {"nested": nested}})
    shape = AnswerShape(tools=(tool,), tool_choice=ToolChoice("required"))
    deep = "[" * (levels - 1) + "]" * (levels - 1)  # within the decoder's reach, beyond the schema check's
    with pytest.raises(UnusableAnswer) as caught:
        interpret(shape, '{"name": "f", "arguments": {"n": ' + deep + "}}")
    assert f"nests deeper than the relay's limit of {MAX_VALUE_DEPTH} levels" in caught.value.message
    at_the_limit = "[" * (MAX_VALUE_DEPTH - 1) + "]" * (MAX_VALUE_DEPTH - 1)
    assert interpret(shape, '{"name": "f", "arguments": {"n": ' + at_the_limit + "}}").tool_calls
