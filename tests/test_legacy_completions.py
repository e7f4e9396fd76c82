"""Legacy `POST /v1/completions` with the official SDK against a real relay: the prompt
sent verbatim, text_completion objects streamed and not, `stop` and `max_tokens`
honoured, what cannot be honoured refused with a 400 naming the param."""

from __future__ import annotations

import json

import openai
import pytest

from gptomni_relay.core.usage import estimate_tokens
from gptomni_relay.simulator import Behaviour, SimulatorState
from tests.harness import Harness, sample_value

EXPECTED = "Hello from the GPT-Omni simulator! You said: Say hello"


def test_a_prompt_is_sent_verbatim_and_answered_as_a_text_completion(relay: Harness) -> None:
    completion = relay.client().completions.create(model="gptomni", prompt="Say hello")

    assert relay.sim.received[-1].prompt == "Say hello"
    assert completion.object == "text_completion" and completion.id.startswith("cmpl-")
    assert completion.model == "gptomni"
    [choice] = completion.choices
    assert (choice.text, choice.index, choice.finish_reason, choice.logprobs) == (EXPECTED, 0, "stop", None)
    assert completion.usage is not None
    assert completion.usage.prompt_tokens == estimate_tokens("Say hello")
    assert completion.usage.completion_tokens == estimate_tokens(EXPECTED)
    assert sample_value(relay.metrics_text(), "gptomni_requests_total", status="200", stream="false") == 1


def test_a_list_of_one_prompt_is_one_prompt(relay: Harness) -> None:
    completion = relay.client().completions.create(model="gptomni", prompt=["Say hello"])
    assert completion.choices[0].text == EXPECTED


def test_streamed_chunks_then_finish_usage_and_done(make_relay) -> None:  # noqa: ANN001
    relay = make_relay(sim=SimulatorState(default=Behaviour(token_delay=0.01)))
    chunks = list(relay.client().completions.create(model="gptomni", prompt="Say hello", stream=True,
                                                    stream_options={"include_usage": True}))

    assert all(chunk.object == "text_completion" for chunk in chunks)
    assert len({chunk.id for chunk in chunks}) == 1
    text_chunks, usage_chunk = chunks[:-1], chunks[-1]
    assert "".join(chunk.choices[0].text for chunk in text_chunks) == EXPECTED
    assert [chunk.choices[0].finish_reason for chunk in text_chunks][-1] == "stop"
    assert all(chunk.choices[0].finish_reason is None for chunk in text_chunks[:-1])
    assert usage_chunk.choices == [] and usage_chunk.usage is not None
    assert usage_chunk.usage.completion_tokens == estimate_tokens(EXPECTED)

    with relay.http().stream("POST", "/v1/completions",
                             json={"model": "gptomni", "prompt": "Say hello", "stream": True}) as response:
        lines = [line for line in response.iter_lines() if line.startswith("data: ")]
    assert lines[-1] == "data: [DONE]"
    assert all("usage" not in json.loads(line.removeprefix("data: ")) for line in lines[:-1])


@pytest.mark.parametrize("stream", [False, True])
def test_stop_is_honoured_and_not_included(relay: Harness, stream: bool) -> None:
    text, finish_reason = complete(relay, stream, stop=["simulator"])
    assert (text, finish_reason) == ("Hello from the GPT-Omni ", "stop")


@pytest.mark.parametrize("stream", [False, True])
def test_max_tokens_cuts_with_finish_reason_length(relay: Harness, stream: bool) -> None:
    text, finish_reason = complete(relay, stream, max_tokens=3)
    assert finish_reason == "length"
    assert EXPECTED.startswith(text) and estimate_tokens(text) == 3


def complete(relay: Harness, stream: bool, **params: object) -> tuple[str, str | None]:
    client = relay.client()
    if not stream:
        choice = client.completions.create(model="gptomni", prompt="Say hello", **params).choices[0]  # type: ignore[call-overload]
        return choice.text, choice.finish_reason
    chunks = list(client.completions.create(model="gptomni", prompt="Say hello", stream=True, **params))  # type: ignore[call-overload]
    return "".join(chunk.choices[0].text for chunk in chunks), chunks[-1].choices[0].finish_reason


@pytest.mark.parametrize(("params", "param"), [
    ({"prompt": ["one", "two"]}, "prompt"),
    ({"prompt": [1, 2, 3]}, "prompt"),
    ({"prompt": [[1, 2]]}, "prompt"),
    ({"echo": True}, "echo"),
    ({"suffix": "after"}, "suffix"),
    ({"logprobs": 2}, "logprobs"),
    ({"logprobs": 0}, "logprobs"),
    ({"best_of": 2}, "best_of"),
    ({"n": 2}, "n"),
    ({"logit_bias": {"50256": -100}}, "logit_bias"),
    ({"stop": ["a", "b", "c", "d", "e"]}, "stop"),
    ({"max_tokens": 0}, "max_tokens"),
])
def test_what_cannot_be_honoured_is_a_400_naming_the_param(relay: Harness, params: dict[str, object],
                                                           param: str) -> None:
    body = {"model": "gptomni", "prompt": "Say hello", **params}
    with pytest.raises(openai.BadRequestError) as raised:
        relay.client().completions.create(**body)  # type: ignore[call-overload]
    assert raised.value.status_code == 400
    assert raised.value.body["param"] == param  # type: ignore[index]
    assert len(relay.sim.received) == 0


def test_harmless_knobs_are_accepted_and_an_unknown_model_is_a_404(relay: Harness) -> None:
    client = relay.client()
    completion = client.completions.create(model="gptomni", prompt="Say hello", temperature=0.2, top_p=0.9,
                                           presence_penalty=0.1, frequency_penalty=0.1, seed=7, user="u", n=1,
                                           best_of=1, echo=False, stream=None)
    assert completion.choices[0].text == EXPECTED
    with pytest.raises(openai.NotFoundError) as raised:
        client.completions.create(model="nope", prompt="Say hello")
    assert raised.value.body["code"] == "model_not_found"  # type: ignore[index]


def test_an_empty_prompt_is_a_400_naming_the_prompt(relay: Harness) -> None:
    with pytest.raises(openai.BadRequestError) as raised:
        relay.client().completions.create(model="gptomni", prompt="   ")
    assert raised.value.body["param"] == "prompt"  # type: ignore[index]


def test_a_stream_broken_midway_ends_with_an_error_event(make_relay) -> None:  # noqa: ANN001
    relay = make_relay(sim=SimulatorState(default=Behaviour(cut_after=3)))
    with relay.http().stream("POST", "/v1/completions",
                             json={"model": "gptomni", "prompt": "Say hello", "stream": True}) as response:
        events = [json.loads(line.removeprefix("data: ")) for line in response.iter_lines() if line.startswith("data: ")]
    assert events[-1]["error"]["code"] == "upstream_error"
    assert "".join(event["choices"][0]["text"] for event in events[:-1]) == "Hello from the "
