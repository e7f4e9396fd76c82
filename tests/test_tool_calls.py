"""Function tools, emulated, through the OpenAI SDK against a real relay: the tools are
described in the folded prompt, GPT-Omni's answer (the simulator's, on cue) is read back
into `tool_calls` in whichever form it wrote them, checked against each tool's schema and
`tool_choice`, asked again with a corrective prompt when unusable, streamed and not, and
tool results reach the next turn."""

from __future__ import annotations

import json
from typing import Any

import openai
import pytest
from pydantic import BaseModel

from gptomni_relay.core.shaping import MAX_SCHEMA_BYTES, MAX_TOOLS
from tests.harness import Harness

WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The current weather in a city.",
        "parameters": {"type": "object", "properties": {"city": {"type": "string", "pattern": "^[A-Z]"}},
                       "required": ["city"], "additionalProperties": False},
    },
}
TIME = {"type": "function", "function": {"name": "get_time", "parameters": {"type": "object", "properties": {}}}}
TOOLS: list[Any] = [WEATHER, TIME]


def call(name: str = "get_weather", **arguments: Any) -> str:
    if name == "get_weather" and not arguments:
        arguments = {"city": "Paris"}
    return "<tool_call>" + json.dumps({"name": name, "arguments": arguments}) + "</tool_call>"


def ask(cue: str) -> list[Any]:
    return [{"role": "user", "content": f"What is the weather in Paris? [[simulate: {cue} ]]"}]


def create(relay: Harness, cue: str, **kwargs: Any) -> Any:
    kwargs.setdefault("tools", TOOLS)
    return relay.client().chat.completions.create(model="gptomni", messages=ask(cue), **kwargs)


def calls_of(completion: Any) -> list[tuple[str, Any]]:
    return [(c.function.name, json.loads(c.function.arguments)) for c in completion.choices[0].message.tool_calls or []]


def test_a_call_comes_back_as_tool_calls_and_the_tools_are_in_the_prompt(relay: Harness) -> None:
    completion = create(relay, call())
    choice = choice0 = completion.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice0.message.content is None
    [tool_call] = choice.message.tool_calls
    assert tool_call.id.startswith("call_") and tool_call.type == "function"
    assert calls_of(completion) == [("get_weather", {"city": "Paris"})]
    prompt = relay.sim.received[-1].prompt
    assert "- get_weather: The current weather in a city." in prompt
    assert '"pattern": "^[A-Z]"' in prompt and "- get_time" in prompt
    assert '<tool_call>{"name": "TOOL_NAME", "arguments": {"ARGUMENT": "VALUE"}}</tool_call>' in prompt
    assert prompt.endswith("You may call several tools at once, one line each.\n\nAssistant:")
    assert completion.usage.completion_tokens > 0


FORMS = {
    "fenced": ('Sure!\n```json\n{"name": "get_weather", "arguments": {"city": "Rome"}}\n```\nLet me know.',
               [("get_weather", {"city": "Rome"})], "Sure!\nLet me know."),
    "bare with prose": ('I will call {"name": "get_weather", "arguments": {"city": "Rome"}} for you.',
                        [("get_weather", {"city": "Rome"})], "I will call\nfor you."),
    "unclosed tag": ('<tool_call>{"name": "get_weather", "arguments": {"city": "Rome"}}',
                     [("get_weather", {"city": "Rome"})], None),
    "fence in a tag": ('<tool_call>\n```json\n{"name": "get_time", "arguments": {}}\n```\n</tool_call>',
                       [("get_time", {})], None),
    "openai shaped, string arguments": (
        '{"type": "function", "function": {"name": "get_weather", "arguments": "{\\"city\\": \\"Oslo\\"}"}}',
        [("get_weather", {"city": "Oslo"})], None),
    "a list, parameters": ('[{"name": "get_weather", "parameters": {"city": "Oslo"}}, {"name": "get_time"}]',
                           [("get_weather", {"city": "Oslo"}), ("get_time", {})], None),
    "several tags": (call(city="Oslo") + "\n" + call("get_time"), [("get_weather", {"city": "Oslo"}), ("get_time", {})],
                     None),
    "function_call tag": ('<function_call>{"name": "get_time", "arguments": {}}</function_call>', [("get_time", {})],
                          None),
}


@pytest.mark.parametrize("form", FORMS)
def test_the_forms_a_web_model_writes(relay: Harness, form: str) -> None:
    cue, expected, content = FORMS[form]
    completion = create(relay, cue)
    assert calls_of(completion) == expected
    assert completion.choices[0].message.content == content
    assert completion.choices[0].finish_reason == "tool_calls"
    assert len(relay.sim.received) == 1


@pytest.mark.parametrize("include_usage", [False, True])
def test_streamed_calls_are_openai_deltas(relay: Harness, include_usage: bool) -> None:
    chunks = list(create(relay, call(city="Oslo") + call("get_time"), stream=True,
                         stream_options={"include_usage": True} if include_usage else None))
    assert chunks[0].choices[0].delta.role == "assistant"
    deltas = [tc for c in chunks if c.choices for tc in c.choices[0].delta.tool_calls or []]
    firsts = [d for d in deltas if d.id]
    assert [(d.index, d.type, d.function.name) for d in firsts] == [(0, "function", "get_weather"),
                                                                     (1, "function", "get_time")]
    assert all(d.id.startswith("call_") for d in firsts)
    arguments = ["".join(d.function.arguments or "" for d in deltas if d.index == i) for i in (0, 1)]
    assert [json.loads(a) for a in arguments] == [{"city": "Oslo"}, {}]
    finishing = [c for c in chunks if c.choices and c.choices[0].finish_reason]
    assert [c.choices[0].finish_reason for c in finishing] == ["tool_calls"]
    assert (chunks[-1].usage is not None and chunks[-1].usage.completion_tokens > 0) == include_usage


def test_the_sdk_stream_helper_assembles_the_calls(relay: Harness) -> None:
    with relay.client().chat.completions.stream(model="gptomni", messages=ask(call(city="Oslo")),
                                                tools=TOOLS) as stream:
        final = stream.get_final_completion()
    assert calls_of(final) == [("get_weather", {"city": "Oslo"})]
    assert final.choices[0].finish_reason == "tool_calls"


def test_auto_may_answer_in_text_streamed_or_not(relay: Harness) -> None:
    completion = create(relay, "It is sunny in Paris.")
    assert completion.choices[0].message.content == "It is sunny in Paris."
    assert completion.choices[0].message.tool_calls is None
    assert completion.choices[0].finish_reason == "stop"
    chunks = list(create(relay, "It is sunny in Paris.", stream=True))
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == "It is sunny in Paris."
    assert chunks[-1].choices[0].finish_reason == "stop"


def test_none_does_not_offer_the_tools_and_answers_in_text(relay: Harness) -> None:
    completion = create(relay, call(), tool_choice="none")
    assert completion.choices[0].message.content == call()
    assert completion.choices[0].finish_reason == "stop"
    assert "You can call these tools" not in relay.sim.received[-1].prompt
    assert relay.sim.received[-1].prompt == ask(call())[0]["content"]  # sent verbatim: nothing to shape
    chunks = list(create(relay, "Sunny.", tool_choice="none", stream=True))
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == "Sunny."


@pytest.mark.parametrize("stream", [False, True])
def test_required_asks_again_for_a_call(relay: Harness, stream: bool) -> None:
    result = create(relay, f"It is sunny. ||| {call()}", tool_choice="required", stream=stream)
    if stream:
        names = [tc.function.name for c in result for tc in (c.choices[0].delta.tool_calls or []) if tc.id]
        assert names == ["get_weather"]
    else:
        assert calls_of(result) == [("get_weather", {"city": "Paris"})]
    first, second = (r.prompt for r in relay.sim.received)
    assert "You must call at least one tool now" in first
    # The corrective prompt: the first prompt, the unusable answer, what was wrong.
    assert second.startswith(first + " It is sunny.\n\nSystem: Your last answer could not be used: the answer "
                                     "holds no tool call, and tool_choice requires one.")


@pytest.mark.parametrize("stream", [False, True])
def test_required_without_a_call_in_any_attempt_is_a_502(relay: Harness, stream: bool) -> None:
    with pytest.raises(openai.InternalServerError) as caught:
        create(relay, "I would rather chat.", tool_choice="required", stream=stream)
    assert caught.value.status_code == 502
    assert caught.value.body["code"] == "invalid_tool_call"
    assert len(relay.sim.received) == 3  # GPTOMNI_MAX_ATTEMPTS


def test_a_named_function_is_the_one_called(relay: Harness) -> None:
    named = {"type": "function", "function": {"name": "get_time"}}
    completion = create(relay, f"{call()} ||| {call('get_time')}", tool_choice=named)
    assert calls_of(completion) == [("get_time", {})]
    first, second = (r.prompt for r in relay.sim.received)
    assert "You must call the tool `get_time` now" in first
    assert "but tool_choice requires `get_time`" in second
    with pytest.raises(openai.InternalServerError) as caught:
        create(relay, call(), tool_choice=named)
    assert caught.value.body["code"] == "invalid_tool_call"


def test_arguments_off_the_schema_are_asked_again(relay: Harness) -> None:
    cue = f"{call(city='paris')} ||| {call(city='Paris', country='FR')} ||| {call(city='Paris')}"
    completion = create(relay, cue, tool_choice="required")
    assert calls_of(completion) == [("get_weather", {"city": "Paris"})]
    prompts = [r.prompt for r in relay.sim.received]
    assert "'paris' does not match '^[A-Z]'" in prompts[1]
    assert "Additional properties are not allowed" in prompts[2]
    assert prompts[2].count("Your last answer could not be used") == 1  # built from the first prompt each time


@pytest.mark.parametrize("stream", [False, True])
def test_with_auto_a_call_never_mended_goes_out_as_the_text_written(relay: Harness, stream: bool) -> None:
    bad = call("get_forecast")
    result = create(relay, bad, stream=stream)
    if stream:
        chunks = list(result)
        assert "".join(c.choices[0].delta.content or "" for c in chunks) == bad
        assert chunks[-1].choices[0].finish_reason == "stop"
    else:
        assert result.choices[0].message.content == bad
        assert result.choices[0].message.tool_calls is None
        assert result.choices[0].finish_reason == "stop"
    assert len(relay.sim.received) == 3
    assert "which is not one of the tools (get_weather, get_time)" in relay.sim.received[-1].prompt


def test_parallel_tool_calls_false_allows_one_call(relay: Harness) -> None:
    two = call(city="Oslo") + call("get_time")
    completion = create(relay, f"{two} ||| {call('get_time')}", parallel_tool_calls=False)
    assert calls_of(completion) == [("get_time", {})]
    assert "Call at most one tool in your answer." in relay.sim.received[0].prompt
    assert "makes 2 calls, but only one is allowed" in relay.sim.received[1].prompt
    # Never one call within the attempts: the first call, which is what was allowed.
    completion = create(relay, two, parallel_tool_calls=False)
    assert calls_of(completion) == [("get_weather", {"city": "Oslo"})]
    assert completion.choices[0].finish_reason == "tool_calls"


def test_parallel_calls_are_kept(relay: Harness) -> None:
    completion = create(relay, call(city="Oslo") + "\n" + call(city="Rome"), parallel_tool_calls=True)
    assert calls_of(completion) == [("get_weather", {"city": "Oslo"}), ("get_weather", {"city": "Rome"})]
    ids = [c.id for c in completion.choices[0].message.tool_calls]
    assert len(set(ids)) == 2


def test_a_length_cut_is_text_with_length(relay: Harness) -> None:
    completion = create(relay, call(), max_tokens=3)
    assert completion.choices[0].finish_reason == "length"
    assert completion.choices[0].message.tool_calls is None


def test_two_turns_the_tool_result_reaches_the_model(relay: Harness) -> None:
    client = relay.client()
    messages = ask(f"{call()} ||| The weather in Paris: {{{{tool_result}}}}")
    first = client.chat.completions.create(model="gptomni", messages=messages, tools=TOOLS)
    [tool_call] = first.choices[0].message.tool_calls
    messages += [first.choices[0].message.model_dump(exclude_none=True),
                 {"role": "tool", "tool_call_id": tool_call.id, "content": '{"celsius": 21, "sky": "clear"}'}]
    second = client.chat.completions.create(model="gptomni", messages=messages, tools=TOOLS)
    assert second.choices[0].message.content == 'The weather in Paris: {"celsius": 21, "sky": "clear"}'
    assert second.choices[0].finish_reason == "stop"
    prompt = relay.sim.received[-1].prompt
    assert (f'Assistant: <tool_call>{{"id": "{tool_call.id}", "name": "get_weather", "arguments": {{"city": "Paris"}}}}'
            f'</tool_call>\n\nTool result (get_weather, {tool_call.id}): {{"celsius": 21, "sky": "clear"}}') in prompt


def bad_request(relay: Harness, **kwargs: Any) -> dict[str, Any]:
    with pytest.raises(openai.BadRequestError) as caught:
        relay.client().chat.completions.create(model="gptomni", messages=ask("x"), **kwargs)
    body: dict[str, Any] = caught.value.body  # type: ignore[assignment]
    return body


def tool(name: str, parameters: Any) -> dict[str, Any]:
    return {"type": "function", "function": {"name": name, "parameters": parameters}}


def test_tools_that_cannot_be_honoured_are_400s_naming_the_param(relay: Harness) -> None:
    assert bad_request(relay, tools=[TIME, tool("x", {"type": "nonsense"})])["param"] == "tools[1].function.parameters"
    huge = {"type": "object", "description": "x" * MAX_SCHEMA_BYTES}
    body = bad_request(relay, tools=[tool("x", huge)])
    assert body["param"] == "tools[0].function.parameters" and "byte limit" in body["message"]
    deep: dict[str, Any] = {"type": "object"}
    for _ in range(40):
        deep = {"type": "object", "properties": {"a": deep}}
    assert bad_request(relay, tools=[tool("x", deep)])["param"] == "tools[0].function.parameters"
    many = [tool(f"t{i}", None) for i in range(MAX_TOOLS + 1)]
    assert bad_request(relay, tools=many)["param"] == "tools"
    assert bad_request(relay, tools=[TIME, TIME])["param"] == "tools[1].function.name"
    named = {"type": "function", "function": {"name": "get_weather"}}
    assert bad_request(relay, tools=[TIME], tool_choice=named)["param"] == "tool_choice"
    assert bad_request(relay, tools=[], tool_choice="required")["param"] == "tool_choice"
    assert relay.sim.received == type(relay.sim.received)()  # nothing reached GPT-Omni


def test_a_catastrophic_pattern_is_bounded(relay: Harness) -> None:
    """A client's pattern that backtracks without end on what the model writes is cut off
    by the relay's time limit: the answer is unusable, the relay stays responsive."""
    evil = tool("grep", {"type": "object", "properties": {"q": {"type": "string", "pattern": "^(a|a)*$"}}})
    cue = call("grep", q="a" * 40 + "b")
    with pytest.raises(openai.InternalServerError) as caught:
        create(relay, cue, tools=[evil], tool_choice="required")
    assert caught.value.body["code"] == "invalid_tool_call"
    assert "took longer than the relay's" in relay.sim.received[-1].prompt


class GetWeather(BaseModel):
    """The current weather in a city."""

    city: str


@pytest.mark.parametrize("tool_choice", ["required", {"type": "function", "function": {"name": "get_weather"}}])
def test_the_stream_helper_with_a_forced_call_and_pydantic_tools(relay: Harness, tool_choice: Any) -> None:
    tool = openai.pydantic_function_tool(GetWeather, name="get_weather")
    messages = ask(call(city='Oslo'))
    with relay.client().chat.completions.stream(model="gptomni", messages=messages, tools=[tool],
                                                tool_choice=tool_choice) as stream:
        events = list(stream)
        final = stream.get_final_completion()
    done = [event for event in events if event.type == "tool_calls.function.arguments.done"]
    assert [(event.name, event.parsed_arguments) for event in done] == [("get_weather", GetWeather(city="Oslo"))]
    [parsed] = final.choices[0].message.tool_calls
    assert parsed.function.parsed_arguments == GetWeather(city="Oslo") and final.choices[0].finish_reason == "tool_calls"
    # As OpenAI streams a call: id, type and name only in its first delta, then arguments.
    deltas = [d for e in events if e.type == "chunk" for d in e.chunk.choices[0].delta.tool_calls or []]
    assert [(d.index, bool(d.id), d.type, d.function.name) for d in deltas] == [
        (0, True, "function", "get_weather"), (0, False, None, None)]
    assert (deltas[0].function.arguments, json.loads(deltas[1].function.arguments)) == ("", {"city": "Oslo"})


def test_parse_reads_a_pydantic_tools_arguments(relay: Harness) -> None:
    tool = openai.pydantic_function_tool(GetWeather, name="get_weather")
    completion = relay.client().chat.completions.parse(model="gptomni", messages=ask(call(city="Rome")), tools=[tool])
    [parsed] = completion.choices[0].message.tool_calls
    assert parsed.function.parsed_arguments == GetWeather(city="Rome")
    assert '"additionalProperties": false' in relay.sim.received[-1].prompt  # the strict schema was described


def test_arguments_json_cannot_carry_are_asked_again(relay: Harness) -> None:
    # 1e999 (bare or in string arguments) would go out as `Infinity`: not JSON to any client.
    number = {"type": "function", "function": {"name": "set_heat", "parameters": {
        "type": "object", "properties": {"celsius": {"type": "number"}}, "required": ["celsius"]}}}
    cue = ('<tool_call>{"name": "set_heat", "arguments": {"celsius": 1e999}}</tool_call> ||| '
           '<tool_call>{"name": "set_heat", "arguments": "{\\"celsius\\": 1e999}"}</tool_call> ||| '
           '<tool_call>{"name": "set_heat", "arguments": {"celsius": 21.5}}</tool_call>')
    completion = create(relay, cue, tools=[number], tool_choice="required")
    assert calls_of(completion) == [("set_heat", {"celsius": 21.5})]
    assert len(relay.sim.received) == 3


@pytest.mark.parametrize("surface", ["chat", "responses"])
def test_lone_surrogates_in_calls_neither_break_the_answer_nor_the_prompt(relay: Harness, surface: str) -> None:
    # GPT-Omni's call with a `\udc00` escape in its arguments is asked again; a client's
    # earlier call with one is folded as the client sent it (either was a 500).
    cue = (r'<tool_call>{"name": "get_weather", "arguments": {"city": "\udc00"}}</tool_call> ||| '
           + call(city="Oslo"))
    sent = r'{"city": "\ud800"}'
    if surface == "chat":
        history = [{"role": "assistant", "content": None, "tool_calls": [
                        {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": sent}}]},
                   {"role": "tool", "tool_call_id": "call_1", "content": "unknown city"}]
        completion = relay.client().chat.completions.create(model="gptomni", messages=[*ask(cue), *history],
                                                            tools=TOOLS, tool_choice="required")
        assert calls_of(completion) == [("get_weather", {"city": "Oslo"})]
    else:
        response = relay.client().responses.create(model="gptomni", tool_choice="required", tools=[
            {"type": "function", **WEATHER["function"]}], input=[
            *ask(cue), {"type": "function_call", "call_id": "call_1", "name": "get_weather", "arguments": sent},
            {"type": "function_call_output", "call_id": "call_1", "output": "unknown city"}])
        assert [json.loads(item.arguments) for item in response.output] == [{"city": "Oslo"}]
    first, second = (received.prompt for received in relay.sim.received)
    assert r'"arguments": "{\"city\": \"\\ud800\"}"' in first  # the client's arguments, as sent


def test_a_schema_ref_is_never_fetched_and_must_resolve_in_the_schema(relay: Harness) -> None:
    # jsonschema, given no registry, fetches a `$ref` it does not know over HTTP: a client
    # could make the relay GET any URL (and hold its event loop while it did), then a 500.
    import socket

    with socket.create_server(("127.0.0.1", 0)) as listener:
        remote = f"http://127.0.0.1:{listener.getsockname()[1]}/schema.json"
        refused = [bad_request(relay, tools=[tool("f", {"$ref": remote})]),
                   bad_request(relay, response_format={"type": "json_schema", "json_schema": {
                       "name": "n", "schema": {"type": "object", "properties": {"a": {"$ref": remote}}}}}),
                   bad_request(relay, tools=[tool("f", {"type": "object", "properties": {
                       "x": {"$ref": "#/$defs/missing"}}})])]
        listener.setblocking(False)
        with pytest.raises(BlockingIOError):
            listener.accept()  # nobody connected
    assert [body["param"] for body in refused] == ["tools[0].function.parameters", "response_format.json_schema.schema",
                                                   "tools[0].function.parameters"]
    assert "$ref" in refused[0]["message"] and "$ref" in refused[2]["message"]
    # References inside the schema, as pydantic writes nested models, are fine.
    nested = tool("get_weather", {"type": "object", "$defs": {"City": {"type": "string", "pattern": "^[A-Z]"}},
                                  "properties": {"city": {"$ref": "#/$defs/City"}}, "required": ["city"]})
    cue = call(city="paris") + " ||| " + call(city="Paris")
    assert calls_of(create(relay, cue, tools=[nested], tool_choice="required")) == [("get_weather", {"city": "Paris"})]
    assert "'paris' does not match '^[A-Z]'" in relay.sim.received[-1].prompt


def test_a_closing_tag_inside_an_argument_is_part_of_the_argument(relay: Harness) -> None:
    # A coding agent's file may well hold `</tool_call>`: the call's JSON decides where
    # the tag ends, not the first closing tag in the text.
    write = tool("write_file", {"type": "object", "properties": {"content": {"type": "string"}}, "required": ["content"]})
    content = "Use <tool_call>{...}</tool_call> to call."
    written = "<tool_call>" + json.dumps({"name": "write_file", "arguments": {"content": content}}) + "</tool_call>"
    completion = create(relay, f"Writing it. {written}\n{call('get_time')}", tools=[write, TIME], tool_choice="required")
    assert calls_of(completion) == [("write_file", {"content": content}), ("get_time", {})]
    assert completion.choices[0].message.content == "Writing it."
    assert len(relay.sim.received) == 1
