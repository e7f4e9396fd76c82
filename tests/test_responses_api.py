"""`POST /v1/responses` with the official Python SDK against a real relay and simulator:
text streamed and not (the SDKs' event sequence, sequence numbers), instructions and input
items folded, max_output_tokens, text.format with `.parse()`, function tools round trip,
built-in tools declined, and a 400 naming the param for what cannot be honoured."""

from __future__ import annotations

import json
from typing import Any

import openai
import pytest
from pydantic import BaseModel

from gptomni_relay.core.usage import estimate_tokens
from gptomni_relay.simulator import Behaviour, SimulatorState
from tests.harness import Harness, sample_value

EXPECTED = "Hello from the GPT-Omni simulator! You said: Hello relay"
TEXT_EVENTS = ["response.created", "response.in_progress", "response.output_item.added",
               "response.content_part.added"]
TEXT_END = ["response.output_text.done", "response.content_part.done", "response.output_item.done",
            "response.completed"]
WEATHER_TOOL = {"type": "function", "name": "get_weather", "description": "Weather in a city",
                "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"],
                               "additionalProperties": False}, "strict": True}
CALL = '<tool_call>{"name": "get_weather", "arguments": {"city": "Paris"}}</tool_call>'


def cue(text: str) -> str:
    return f"What is the weather in Paris? [[simulate: {text} ]]"


def test_a_string_input_is_answered_as_a_completed_response(relay: Harness) -> None:
    response = relay.client().responses.create(model="gptomni", input="Hello relay")

    assert relay.sim.received[-1].prompt == "Hello relay"
    assert response.object == "response" and response.id.startswith("resp_")
    assert (response.status, response.model, response.output_text) == ("completed", "gptomni", EXPECTED)
    [message] = response.output
    assert message.type == "message" and message.role == "assistant" and message.status == "completed"
    assert response.usage is not None
    assert response.usage.input_tokens == estimate_tokens("Hello relay")
    assert response.usage.output_tokens == estimate_tokens(EXPECTED)
    assert response.usage.total_tokens == response.usage.input_tokens + response.usage.output_tokens
    assert response.store is False
    assert sample_value(relay.metrics_text(), "gptomni_requests_total", status="200", stream="false") == 1


def test_instructions_and_message_items_are_folded_in_order(relay: Harness) -> None:
    relay.client().responses.create(model="gptomni", instructions="Be terse.", input=[
        {"role": "developer", "content": "Answer in English."},
        {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "Hi"}]},
        {"role": "assistant", "content": [{"type": "output_text", "text": "Hello!", "annotations": []}]},
        {"role": "user", "content": "Hello relay"},
    ])
    assert relay.sim.received[-1].prompt == (
        "System: Be terse.\n\nSystem: Answer in English.\n\nUser: Hi\n\nAssistant: Hello!\n\nUser: Hello relay"
        "\n\nAssistant:")


def stream_events(relay: Harness, **body: Any) -> list[tuple[str, dict[str, Any]]]:
    with relay.http().stream("POST", "/v1/responses",
                             json={"model": "gptomni", "input": "Hello relay", "stream": True, **body}) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        lines = [line for line in response.iter_lines() if line]
    names = [line.removeprefix("event: ") for line in lines if line.startswith("event: ")]
    data = [json.loads(line.removeprefix("data: ")) for line in lines if line.startswith("data: ")]
    assert names == [event["type"] for event in data]  # every event named as its type
    assert [event["sequence_number"] for event in data] == list(range(len(data)))
    return list(zip(names, data, strict=True))


def test_the_stream_is_the_event_sequence_the_sdks_assemble(make_relay) -> None:  # noqa: ANN001
    relay = make_relay(sim=SimulatorState(default=Behaviour(token_delay=0.01)))
    events = stream_events(relay)
    names = [name for name, _ in events]
    assert names[:4] == TEXT_EVENTS and names[-4:] == TEXT_END
    deltas = [data for name, data in events if name == "response.output_text.delta"]
    assert len(deltas) == 9 and "".join(delta["delta"] for delta in deltas) == EXPECTED
    assert events[-4][1]["text"] == EXPECTED
    final = events[-1][1]["response"]
    assert final["status"] == "completed" and final["output"][0]["content"][0]["text"] == EXPECTED
    assert final["usage"]["output_tokens"] == estimate_tokens(EXPECTED)

    with relay.client().responses.stream(model="gptomni", input="Hello relay") as stream:
        texts = [event.delta for event in stream if event.type == "response.output_text.delta"]
        final_response = stream.get_final_response()
    assert "".join(texts) == final_response.output_text == EXPECTED


@pytest.mark.parametrize("stream", [False, True])
def test_max_output_tokens_ends_incomplete(relay: Harness, stream: bool) -> None:
    client = relay.client()
    if stream:
        events = stream_events(relay, max_output_tokens=3)
        assert events[-1][0] == "response.incomplete"
        response = client.responses.create(model="gptomni", input="Hello relay", max_output_tokens=3, stream=True)
        final = [event for event in response][-1].response
    else:
        final = client.responses.create(model="gptomni", input="Hello relay", max_output_tokens=3)
    assert final.status == "incomplete"
    assert final.incomplete_details is not None and final.incomplete_details.reason == "max_output_tokens"
    assert EXPECTED.startswith(final.output_text) and estimate_tokens(final.output_text) == 3


class Weather(BaseModel):
    city: str
    celsius: int


@pytest.mark.parametrize("stream", [False, True])
def test_parse_with_a_pydantic_model_gets_the_json_out_of_prose(relay: Harness, stream: bool) -> None:
    prose = 'Here you are: ```json\n{"city": "Paris", "celsius": 21}\n``` Enjoy.'
    client = relay.client()
    if stream:
        with client.responses.stream(model="gptomni", input=cue(prose), text_format=Weather) as events:
            list(events)
            parsed = events.get_final_response().output_parsed
    else:
        parsed = client.responses.parse(model="gptomni", input=cue(prose), text_format=Weather).output_parsed
    assert parsed == Weather(city="Paris", celsius=21)
    assert '"celsius"' in relay.sim.received[-1].prompt


def test_json_object_format(relay: Harness) -> None:
    response = relay.client().responses.create(model="gptomni", input=cue('Sure: {"a": 1} done'),
                                               text={"format": {"type": "json_object"}})
    assert json.loads(response.output_text) == {"a": 1}


@pytest.mark.parametrize("stream", [False, True])
def test_function_tools_round_trip(relay: Harness, stream: bool) -> None:
    client = relay.client()
    question = cue(f"{CALL} ||| It is {{{{tool_result}}}} in Paris.")
    if stream:
        events = stream_events(relay, input=question, tools=[WEATHER_TOOL])
        names = [name for name, _ in events]
        assert names == ["response.created", "response.in_progress", "response.output_item.added",
                         "response.function_call_arguments.delta", "response.function_call_arguments.done",
                         "response.output_item.done", "response.completed"]
        item = events[-1][1]["response"]["output"][0]
        call_id, arguments = item["call_id"], item["arguments"]
        assert item["name"] == "get_weather" and events[4][1]["arguments"] == arguments
    else:
        first = client.responses.create(model="gptomni", input=question, tools=[WEATHER_TOOL])
        [call] = first.output
        assert call.type == "function_call" and call.name == "get_weather" and call.status == "completed"
        call_id, arguments = call.call_id, call.arguments
    assert call_id.startswith("call_") and json.loads(arguments) == {"city": "Paris"}
    assert "get_weather" in relay.sim.received[-1].prompt

    second = client.responses.create(model="gptomni", tools=[WEATHER_TOOL], input=[
        {"role": "user", "content": question},
        {"type": "function_call", "call_id": call_id, "name": "get_weather", "arguments": arguments},
        {"type": "function_call_output", "call_id": call_id, "output": "21 °C and sunny"},
    ])
    assert second.output_text == "It is 21 °C and sunny in Paris."
    assert f"Tool result (get_weather, {call_id}): 21 °C and sunny" in relay.sim.received[-1].prompt


def test_built_in_tools_are_declined_never_described(relay: Harness) -> None:
    response = relay.client().responses.create(
        model="gptomni", input="Hello relay", tool_choice="auto",
        tools=[{"type": "web_search", "external_web_access": False}, {"type": "file_search", "vector_store_ids": ["v"]},
               {"type": "namespace", "name": "ns", "description": "d", "tools": []}],
        reasoning={"summary": "auto"}, include=["reasoning.encrypted_content"], store=False, prompt_cache_key="k",
        parallel_tool_calls=True, metadata={"a": "b"}, user="u", safety_identifier="s", service_tier="auto",
        truncation="disabled", temperature=0.5, top_p=0.9)
    assert response.output_text == EXPECTED
    assert relay.sim.received[-1].prompt == "Hello relay"  # nothing about tools it cannot call


@pytest.mark.parametrize(("body", "param"), [
    ({"previous_response_id": "resp_123"}, "previous_response_id"),
    ({"conversation": "conv_1"}, "conversation"),
    ({"background": True}, "background"),
    ({"top_logprobs": 2}, "top_logprobs"),
    ({"include": ["message.output_text.logprobs"]}, "include[0]"),
    ({"input": [{"role": "user", "content": [{"type": "input_image", "image_url": "https://x/y.png"}]}]},
     "input[0].content[0].type"),
    ({"input": [{"role": "user", "content": [{"type": "input_file", "file_id": "f"}]}]}, "input[0].content[0].type"),
    ({"input": [{"type": "item_reference", "id": "msg_1"}]}, "input[0].type"),
    ({"tools": [{"type": "web_search"}], "tool_choice": "required"}, "tools[0].type"),
    ({"tools": [{"type": "web_search"}], "tool_choice": {"type": "web_search"}}, "tool_choice"),
    ({"tools": [WEATHER_TOOL], "tool_choice": {"type": "function", "name": "nope"}}, "tool_choice"),
    ({"tools": [{**WEATHER_TOOL, "parameters": {"type": "nonsense"}}]}, "tools[0].parameters"),
    ({"text": {"format": {"type": "json_schema", "name": "x", "schema": {"type": 5}}}}, "text.format.schema"),
    ({"max_output_tokens": 0}, "max_output_tokens"),
    ({"input": "   "}, "input"),
])
def test_what_cannot_be_honoured_is_a_400_naming_the_param(relay: Harness, body: dict[str, Any], param: str) -> None:
    with pytest.raises(openai.BadRequestError) as raised:
        relay.client().responses.create(**{"model": "gptomni", "input": "Hello relay", **body})
    assert raised.value.body["param"] == param  # type: ignore[index]
    assert len(relay.sim.received) == 0


def test_a_stream_broken_midway_ends_with_error_and_response_failed(make_relay) -> None:  # noqa: ANN001
    relay = make_relay(sim=SimulatorState(default=Behaviour(cut_after=3)))
    events = stream_events(relay)
    names = [name for name, _ in events]
    assert names[-2:] == ["error", "response.failed"]
    assert events[-2][1]["code"] == "upstream_error"
    assert events[-1][1]["response"]["status"] == "failed"
    assert events[-1][1]["response"]["error"]["code"] == "server_error"
    assert "".join(data["delta"] for name, data in events if name == "response.output_text.delta") == "Hello from the "


def test_an_alias_is_echoed_and_an_unknown_model_is_a_404(make_relay) -> None:  # noqa: ANN001
    relay = make_relay(model_aliases={"gpt-4o": "gptomni"})
    assert relay.client().responses.create(model="gpt-4o", input="Hello relay").model == "gpt-4o"
    with pytest.raises(openai.NotFoundError):
        relay.client().responses.create(model="gpt-5", input="Hello relay")


class City(BaseModel):
    city: str


def test_the_stream_helper_assembles_prose_and_a_call(relay: Harness) -> None:
    tool = openai.pydantic_function_tool(City, name="get_weather")  # Responses takes the chat form too
    with relay.client().responses.stream(model="gptomni", input=cue(f"Let me look. {CALL}"), tools=[tool],
                                         tool_choice="required") as stream:
        events = [(event.type, getattr(event, "output_index", None)) for event in stream]
        final = stream.get_final_response()
    assert events[2:8] == [("response.output_item.added", 0), ("response.content_part.added", 0),
                           ("response.output_text.delta", 0), ("response.output_text.done", 0),
                           ("response.content_part.done", 0), ("response.output_item.done", 0)]
    assert events[8:12] == [("response.output_item.added", 1), ("response.function_call_arguments.delta", 1),
                            ("response.function_call_arguments.done", 1), ("response.output_item.done", 1)]
    message, function_call = final.output
    assert message.type == "message" and final.output_text == "Let me look."
    assert function_call.type == "function_call" and function_call.name == "get_weather"
    assert function_call.parsed_arguments == City(city="Paris") and final.status == "completed"


def test_a_cut_stream_ends_with_response_incomplete_as_openai_ends_it(relay: Harness) -> None:
    # The SDK's stream helper keeps a final response only for `response.completed` (so
    # against OpenAI too); the terminal event carries the cut response.
    with relay.client().responses.stream(model="gptomni", input="Hello relay", max_output_tokens=2) as stream:
        last = list(stream)[-1]
    assert last.type == "response.incomplete"
    assert last.response.status == "incomplete" and last.response.incomplete_details.reason == "max_output_tokens"
    assert EXPECTED.startswith(last.response.output_text) and last.response.output_text


def test_an_earlier_refusal_stays_in_the_input(relay: Harness) -> None:
    # An output message with a refusal part, sent back in `input` as the SDKs send output.
    relay.client().responses.create(model="gptomni", input=[
        {"role": "user", "content": "Hello relay"},
        {"type": "message", "role": "assistant", "id": "msg_1", "status": "completed",
         "content": [{"type": "refusal", "refusal": "I can't help with that."}]},
        {"role": "user", "content": "Why?"}])
    assert relay.sim.received[-1].prompt == (
        "User: Hello relay\n\nAssistant: I can't help with that.\n\nUser: Why?\n\nAssistant:")
