"""LangChain's OpenAI chat model (`langchain-openai` ChatOpenAI) pointed at a real relay:
`bind_tools` (streamed and not, and the tool result's turn), `with_structured_output`
through function calling and through json_schema, the same over the Responses API
(`use_responses_api`), and `stream_usage`."""

from __future__ import annotations

import json

from langchain_core.messages import AIMessageChunk, HumanMessage, ToolMessage
from langchain_core.tools import tool
from langchain_openai import ChatOpenAI
from pydantic import BaseModel

from tests.harness import Harness


class Weather(BaseModel):
    """The weather in a city."""

    city: str
    celsius: int


@tool
def get_weather(city: str) -> str:
    """The current weather in a city."""
    return json.dumps({"city": city, "celsius": 21})


def model(relay: Harness) -> ChatOpenAI:
    return ChatOpenAI(model="gptomni", base_url=f"{relay.url}/v1", api_key=relay.api_key, max_retries=0)


def human(cue: str) -> HumanMessage:
    return HumanMessage(f"What is the weather in Paris? [[simulate: {cue} ]]")


CALL = '<tool_call>{"name": "get_weather", "arguments": {"city": "Paris"}}</tool_call>'


def test_bind_tools_then_the_tool_result(relay: Harness) -> None:
    chat = model(relay).bind_tools([get_weather])
    messages = [human(f"{CALL} ||| It is {{{{tool_result}}}} in Paris.")]
    called = chat.invoke(messages)
    [tool_call] = called.tool_calls
    assert (tool_call["name"], tool_call["args"]) == ("get_weather", {"city": "Paris"})
    assert tool_call["id"].startswith("call_")
    assert called.response_metadata["finish_reason"] == "tool_calls"
    messages += [called, ToolMessage(get_weather.invoke(tool_call["args"]), tool_call_id=tool_call["id"])]
    answered = chat.invoke(messages)
    assert answered.content == 'It is {"city": "Paris", "celsius": 21} in Paris.'
    assert not answered.tool_calls
    assert "- get_weather: The current weather in a city." in relay.sim.received[0].prompt


def test_bind_tools_streamed(relay: Harness) -> None:
    chat = model(relay).bind_tools([get_weather], tool_choice="required")
    chunks = list(chat.stream([human(f"No. ||| {CALL}")]))
    assembled = chunks[0]
    for chunk in chunks[1:]:
        assembled += chunk
    assert isinstance(assembled, AIMessageChunk)
    assert [(c["name"], c["args"]) for c in assembled.tool_calls] == [("get_weather", {"city": "Paris"})]
    assert len(relay.sim.received) == 2  # the text answer was asked again


def test_structured_output_by_function_calling(relay: Harness) -> None:
    structured = model(relay).with_structured_output(Weather, method="function_calling")
    cue = ('```json\n{"name": "Weather", "arguments": {"city": "Paris", "celsius": "warm"}}\n``` ||| '
           '<tool_call>{"name": "Weather", "arguments": {"city": "Paris", "celsius": 21}}</tool_call>')
    assert structured.invoke([human(cue)]) == Weather(city="Paris", celsius=21)
    first, second = (r.prompt for r in relay.sim.received)
    assert "You must call the tool `Weather` now" in first
    assert "'warm' is not of type 'integer'" in second


def test_structured_output_by_json_schema(relay: Harness) -> None:
    structured = model(relay).with_structured_output(Weather, method="json_schema")
    answer = structured.invoke([human('Here: {"city": "Paris", "celsius": 21}')])
    assert answer == Weather(city="Paris", celsius=21)
    assert "matches this JSON schema" in relay.sim.received[-1].prompt


def test_the_responses_api_and_stream_usage(relay: Harness) -> None:
    # ChatOpenAI(use_responses_api=True) speaks /v1/responses; stream_usage asks chat for
    # the usage chunk (stream_options.include_usage).
    responses = ChatOpenAI(model="gptomni", base_url=f"{relay.url}/v1", api_key=relay.api_key, max_retries=0,
                           use_responses_api=True)
    called = responses.bind_tools([get_weather]).invoke([human(CALL)])
    assert [(c["name"], c["args"]) for c in called.tool_calls] == [("get_weather", {"city": "Paris"})]
    weather = responses.with_structured_output(Weather, method="json_schema").invoke(
        [human('Sure: {"city": "Paris", "celsius": 21}')])
    assert weather == Weather(city="Paris", celsius=21)
    streamed = list(responses.stream("Hello relay"))
    assert "".join(part["text"] for chunk in streamed for part in chunk.content if isinstance(part, dict)) == (
        "Hello from the GPT-Omni simulator! You said: Hello relay")
    chunks = list(ChatOpenAI(model="gptomni", base_url=f"{relay.url}/v1", api_key=relay.api_key, max_retries=0,
                             stream_usage=True).stream("Hello relay"))
    usage = [chunk.usage_metadata for chunk in chunks if chunk.usage_metadata]
    assert len(usage) == 1 and usage[0]["output_tokens"] > 0
    assert usage[0]["total_tokens"] == usage[0]["input_tokens"] + usage[0]["output_tokens"]
