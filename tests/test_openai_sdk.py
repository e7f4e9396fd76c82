"""The official OpenAI SDK against a real relay and simulator over loopback."""

from __future__ import annotations

import json
from typing import Any

import httpx
import openai
import pytest

from gptomni_relay.simulator import Behaviour, SimulatorState
from tests.harness import Harness, sample_value

HELLO = [{"role": "user", "content": "Hello relay"}]
EXPECTED = "Hello from the GPT-Omni simulator! You said: Hello relay"


def test_sync_stream_has_role_first_finish_last_and_done(make_relay) -> None:  # noqa: ANN001
    relay = make_relay(sim=SimulatorState(default=Behaviour(token_delay=0.02)))
    chunks = list(relay.client().chat.completions.create(model="gptomni", messages=HELLO, stream=True))

    assert chunks[0].choices[0].delta.role == "assistant"
    assert all(c.object == "chat.completion.chunk" for c in chunks)
    assert len({c.id for c in chunks}) == 1 and chunks[0].id.startswith("chatcmpl-")
    assert [c.choices[0].finish_reason for c in chunks][-1] == "stop"
    assert all(c.choices[0].finish_reason is None for c in chunks[:-1])
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == EXPECTED
    assert len(chunks) == 10  # nine pieces as the upstream sent them, then the finish chunk


def stream_events(relay: Harness, **extra: object) -> list[str]:
    with relay.http().stream("POST", "/v1/chat/completions",
                             json={"model": "gptomni", "messages": HELLO, "stream": True, **extra}) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        return [line.removeprefix("data: ") for line in response.iter_lines() if line.startswith("data: ")]


def test_stream_wire_format_ends_with_done(relay: Harness) -> None:
    events = stream_events(relay)
    assert events[-1] == "[DONE]"
    chunks = [json.loads(event) for event in events[:-1]]
    # As OpenAI: no `usage` field at all unless the client asks for usage.
    assert all("usage" not in chunk and chunk["choices"][0]["logprobs"] is None for chunk in chunks)


def test_stream_with_include_usage_has_null_usage_until_the_usage_chunk(relay: Harness) -> None:
    chunks = [json.loads(event) for event in stream_events(relay, stream_options={"include_usage": True})[:-1]]
    assert all(chunk["usage"] is None for chunk in chunks[:-1])
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["total_tokens"] > 0


async def test_async_stream_with_usage_chunk(relay: Harness) -> None:
    async with relay.async_client() as client:
        stream = await client.chat.completions.create(
            model="gptomni", messages=HELLO, stream=True, stream_options={"include_usage": True}
        )
        chunks = [chunk async for chunk in stream]
    usage_chunk = chunks[-1]
    assert usage_chunk.choices == []
    assert usage_chunk.usage is not None
    assert usage_chunk.usage.total_tokens == usage_chunk.usage.prompt_tokens + usage_chunk.usage.completion_tokens
    assert usage_chunk.usage.completion_tokens > 0
    assert chunks[-2].choices[0].finish_reason == "stop"


def test_non_streaming_completion_with_usage(relay: Harness) -> None:
    completion = relay.client().chat.completions.create(model="gptomni", messages=HELLO)

    assert completion.object == "chat.completion"
    assert completion.choices[0].message.role == "assistant"
    assert completion.choices[0].message.content == EXPECTED
    assert completion.choices[0].finish_reason == "stop"
    assert completion.usage is not None and completion.usage.completion_tokens > 0


async def test_async_non_streaming(relay: Harness) -> None:
    async with relay.async_client() as client:
        completion = await client.chat.completions.create(model="gptomni", messages=HELLO)
    assert completion.choices[0].message.content == EXPECTED


def test_conversation_is_folded_into_one_prompt(relay: Harness) -> None:
    relay.client().chat.completions.create(
        model="gptomni",
        messages=[
            {"role": "system", "content": "Answer in French."},
            {"role": "user", "content": "Hi"},
            {"role": "assistant", "content": "Bonjour !"},
            {"role": "user", "content": [{"type": "text", "text": "Count"}, {"type": "text", "text": "to two"}]},
        ],
    )
    received = relay.sim.received[-1]
    assert received.prompt == (
        "System: Answer in French.\n\nUser: Hi\n\nAssistant: Bonjour !\n\nUser: Count\nto two\n\nAssistant:"
    )


def test_upstream_request_has_the_web_chat_headers(relay: Harness) -> None:
    relay.client().chat.completions.create(model="gptomni", messages=HELLO)
    headers = relay.sim.received[-1].headers
    assert headers["content-type"] == "text/plain;charset=UTF-8"
    assert headers["origin"] == relay.sim_server.url
    assert headers["referer"] == f"{relay.sim_server.url}/zh"
    assert headers["cookie"] == "session=alpha"
    assert relay.sim.received[-1].prompt == "Hello relay"


def test_sampling_parameters_are_accepted_and_ignored(relay: Harness) -> None:
    # Knobs the web chat lacks, whose absence cannot change what the answer is.
    completion = relay.client().chat.completions.create(
        model="gptomni", messages=HELLO, temperature=0.2, top_p=0.9, presence_penalty=0.1, frequency_penalty=0.1,
        seed=1, user="someone", store=False, metadata={"team": "a"}, parallel_tool_calls=False, logprobs=False,
        logit_bias={}, modalities=["text"], stream=None,
    )
    assert completion.choices[0].message.content == EXPECTED


def test_models_list_and_retrieve(make_relay) -> None:  # noqa: ANN001
    relay = make_relay(models=["gptomni", "gpt-4o"])
    client = relay.client()
    assert [m.id for m in client.models.list()] == ["gptomni", "gpt-4o"]
    assert client.models.retrieve("gpt-4o").id == "gpt-4o"
    with pytest.raises(openai.NotFoundError) as caught:
        client.models.retrieve("nope")
    assert caught.value.body["code"] == "model_not_found"


def test_health_and_readiness(relay: Harness) -> None:
    http = relay.http()
    assert http.get("/healthz").status_code == 200
    ready = http.get("/readyz")
    assert ready.status_code == 200 and ready.json()["ready"] is True


def test_the_public_port_serves_the_api_and_bare_probes_only(relay: Harness) -> None:
    http = relay.http()
    for private in ("/metrics", "/openapi.json", "/docs", "/redoc"):
        response = http.get(private)
        assert response.status_code == 404 and response.json()["error"]["code"] == "unknown_url", private
    ready = http.get("/readyz")
    assert ready.json() == {"ready": True}  # no credential ids, states or loads
    for route in ("/healthz", "/readyz"):
        head = http.head(route)
        assert head.status_code == 200 and head.content == b""
    assert "server" not in {name.lower() for name in ready.headers}


def test_metrics_live_on_their_own_port(relay: Harness) -> None:
    assert relay.metrics_server.port != relay.relay_server.port
    relay.client().models.list()
    relay.http().post("/v1/chat/completions", json={"model": "gptomni", "messages": []})
    # A request refused before it named a valid model is counted under model="unknown".
    assert 'gptomni_requests_total{model="unknown",status="400",stream="false"} 1.0' in relay.metrics_text()
    assert httpx.get(relay.metrics_url.replace("/metrics", "/readyz"), timeout=10).json() == {"ready": True, "pool": "local"}
    assert httpx.get(relay.metrics_url.replace("/metrics", "/v1/models"), timeout=10).status_code == 404


def test_refusals_outside_chat_completions_are_counted(relay: Harness) -> None:
    http = relay.http()
    http.get("/v1/models", headers={"Authorization": "Bearer wrong-key"})
    http.get("/v1/nothing-here")
    http.delete("/v1/models")
    scraped = relay.metrics_text()
    for status in ("401", "404", "405"):
        assert sample_value(scraped, "gptomni_other_error_responses_total", status=status) == 1.0, status


def test_a_trailing_slash_is_not_redirected_to_the_clients_host(relay: Harness) -> None:
    response = relay.http().get("/v1/models/", headers={"host": "evil.example"}, follow_redirects=False)
    assert response.status_code != 307 and "location" not in response.headers


@pytest.mark.parametrize("stream", [False, True])
def test_everyday_chat_params_through_the_sdk(relay: Harness, stream: bool) -> None:
    client = relay.client()
    # n=1 spelt out, a developer turn (folded as System, like system), reasoning models'
    # max_completion_tokens with reasoning_effort (the cut is honoured, the effort ignored),
    # and bookkeeping / latency hints whose absence cannot change the answer.
    messages = [{"role": "developer", "content": "Be brief."}, *HELLO]
    completion = client.chat.completions.create(
        model="gptomni", messages=messages, n=1, max_completion_tokens=3, reasoning_effort="low", stream=stream,
        verbosity="low", service_tier="auto", prompt_cache_key="k", safety_identifier="s", user="u", seed=3,
        metadata={"team": "a"}, store=True, prediction={"type": "content", "content": "Hello"})
    if stream:
        chunks = list(completion)
        text = "".join(c.choices[0].delta.content or "" for c in chunks)
        finish = chunks[-1].choices[0].finish_reason
    else:
        text, finish = completion.choices[0].message.content, completion.choices[0].finish_reason
    assert finish == "length" and EXPECTED.startswith(text) and text
    assert relay.sim.received[-1].prompt == "System: Be brief.\n\nUser: Hello relay\n\nAssistant:"


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize("part", [
    {"type": "image_url", "image_url": {"url": "https://example.com/a.png"}},
    {"type": "input_audio", "input_audio": {"data": "UklGRg==", "format": "wav"}},
    {"type": "file", "file": {"file_id": "file-1"}},
])
def test_non_text_parts_are_400s_naming_the_part_never_dropped(relay: Harness, part: dict[str, Any],
                                                               stream: bool) -> None:
    messages = [{"role": "system", "content": "Be brief."},
                {"role": "user", "content": [{"type": "text", "text": "What is this?"}, part]}]
    with pytest.raises(openai.BadRequestError) as caught:
        relay.client().chat.completions.create(model="gptomni", messages=messages, stream=stream)
    assert (caught.value.param, caught.value.code) == ("messages[1].content[1]", "unsupported_content")
    assert part["type"] in caught.value.message
    assert not relay.sim.received


def test_an_earlier_refusal_stays_in_the_conversation(relay: Harness) -> None:
    # What the assistant said is part of the conversation, refusal or not (OpenAI answers
    # a refusal in the message's `refusal`, and takes it back as that or as a refusal part).
    client = relay.client()
    for refused in ({"role": "assistant", "content": None, "refusal": "I can't help with that."},
                    {"role": "assistant", "content": [{"type": "refusal", "refusal": "I can't help with that."}]}):
        client.chat.completions.create(model="gptomni", messages=[*HELLO, refused, {"role": "user", "content": "Why?"}])
        assert relay.sim.received[-1].prompt == (
            "User: Hello relay\n\nAssistant: I can't help with that.\n\nUser: Why?\n\nAssistant:")
    with pytest.raises(openai.BadRequestError) as caught:  # a refusal is the assistant's alone
        client.chat.completions.create(model="gptomni", messages=[
            {"role": "user", "content": [{"type": "refusal", "refusal": "no"}]}])
    assert caught.value.param == "messages[0].content[0]"
