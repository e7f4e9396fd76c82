"""An agents framework that speaks Responses (PyPI `openai-agents`): an Agent with a
function tool, run offline against the relay through `OpenAIResponsesModel`; the tool is
called, its result goes back, and the agent's final answer uses it; the same through
`OpenAIChatCompletionsModel`, with a structured `output_type`."""

from __future__ import annotations

import openai
from agents import Agent, OpenAIResponsesModel, Runner, function_tool, set_tracing_disabled

from tests.harness import Harness

CALL = '<tool_call>{"name": "get_weather", "arguments": {"city": "Paris"}}</tool_call>'
calls: list[str] = []


@function_tool
def get_weather(city: str) -> str:
    """The weather in a city."""
    calls.append(city)
    return f"21 C and sunny in {city}"


async def test_an_agent_calls_its_tool_and_answers_with_the_result(relay: Harness) -> None:
    set_tracing_disabled(True)  # offline: no trace export to OpenAI
    client = openai.AsyncOpenAI(base_url=f"{relay.url}/v1", api_key=relay.api_key, max_retries=0)
    agent = Agent(name="weather", instructions="You answer weather questions.", tools=[get_weather],
                  model=OpenAIResponsesModel(model="gptomni", openai_client=client))
    # Each run its own cue: the simulator counts a cue's uses across requests.
    def question(says: str) -> str:
        return f"Weather in Paris? [[simulate: {CALL} ||| {says}: {{{{tool_result}}}} ]]"

    try:
        result = await Runner.run(agent, question("Agent says"))
        streamed = Runner.run_streamed(agent, question("Streamed agent says"))
        async for _ in streamed.stream_events():
            pass
    finally:
        await client.close()

    assert calls[:1] == ["Paris"]
    assert result.final_output == "Agent says: 21 C and sunny in Paris"
    assert streamed.final_output == "Streamed agent says: 21 C and sunny in Paris"
    assert calls == ["Paris", "Paris"]
    prompts = [received.prompt for received in relay.sim.received]
    assert "System: You answer weather questions." in prompts[0] and "get_weather" in prompts[0]
    assert "Tool result (get_weather" in prompts[1]


async def test_an_agent_on_the_chat_completions_model(relay: Harness) -> None:
    # The same agent through `OpenAIChatCompletionsModel` (what people point at
    # OpenAI-compatible servers): tools streamed and not, and a structured `output_type`.
    from agents import ModelSettings, OpenAIChatCompletionsModel
    from pydantic import BaseModel

    class Forecast(BaseModel):
        city: str
        celsius: int

    set_tracing_disabled(True)
    client = openai.AsyncOpenAI(base_url=f"{relay.url}/v1", api_key=relay.api_key, max_retries=0)
    model = OpenAIChatCompletionsModel(model="gptomni", openai_client=client)
    settings = ModelSettings(include_usage=True, parallel_tool_calls=False, max_tokens=200)
    agent = Agent(name="weather", instructions="You answer weather questions.", tools=[get_weather], model=model,
                  model_settings=settings)
    structured = Agent(name="forecast", tools=[get_weather], model=model, output_type=Forecast)
    calls.clear()
    try:
        result = await Runner.run(agent, f"Paris? [[simulate: {CALL} ||| Chat says: {{{{tool_result}}}} ]]")
        streamed = Runner.run_streamed(agent, f"Paris? [[simulate: {CALL} ||| Streamed: {{{{tool_result}}}} ]]")
        async for _ in streamed.stream_events():
            pass
        forecast = await Runner.run(structured, 'Paris? [[simulate: Sure: {"city": "Paris", "celsius": 21} ]]')
    finally:
        await client.close()
    assert result.final_output == "Chat says: 21 C and sunny in Paris"
    assert streamed.final_output == "Streamed: 21 C and sunny in Paris"
    assert forecast.final_output == Forecast(city="Paris", celsius=21)
    assert calls == ["Paris", "Paris"]
