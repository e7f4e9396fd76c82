"""Every failure reaches the client as an OpenAI error object with the right status."""

from __future__ import annotations

import time
from typing import Any

import httpx
import openai
import pytest

from gptomni_relay.simulator import Behaviour, SimulatorState
from tests.harness import Harness

HELLO = [{"role": "user", "content": "Hello"}]


def assert_openai_error(response: httpx.Response, status: int, param: str | None = None, code: str | None = None) -> dict[str, Any]:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["message"]
    if param is not None:
        assert error["param"] == param
    if code is not None:
        assert error["code"] == code
    return error


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"model": "gptomni", "messages": "hello"}, "messages"),
        ({"messages": HELLO}, "model"),
        ({"model": "gptomni", "messages": []}, "messages"),
        ({"model": "gptomni", "messages": [{"role": "wizard", "content": "x"}]}, "messages[0].role"),
        ({"model": "gptomni", "messages": HELLO, "stream": "sometimes"}, "stream"),
        ({"model": "gptomni", "messages": HELLO, "n": 2}, "n"),
        ({"model": "gptomni", "messages": HELLO, "tools": [{"type": "function", "function": {
            "name": "f", "parameters": {"type": 7}}}]}, "tools[0].function.parameters"),
        ({"model": "gptomni", "messages": HELLO, "tools": [{"type": "function", "function": {"name": "f f"}}]},
         "tools[0].function.name"),
        ({"model": "gptomni", "messages": HELLO, "functions": [{"name": "f"}]}, "functions"),
        ({"model": "gptomni", "messages": HELLO, "function_call": "auto"}, "function_call"),
        ({"model": "gptomni", "messages": HELLO, "logit_bias": {"50256": -100}}, "logit_bias"),
        ({"model": "gptomni", "messages": HELLO, "logprobs": True}, "logprobs"),
        ({"model": "gptomni", "messages": HELLO, "top_logprobs": 2}, "top_logprobs"),
        ({"model": "gptomni", "messages": HELLO, "modalities": ["text", "audio"]}, "modalities"),
        ({"model": "gptomni", "messages": HELLO, "audio": {"voice": "alloy", "format": "mp3"}}, "audio"),
        ({"model": "gptomni", "messages": HELLO, "web_search_options": {}}, "web_search_options"),
        ({"model": "gptomni", "messages": HELLO, "stop": ["a", "b", "c", "d", "e"]}, "stop"),
        ({"model": "gptomni", "messages": HELLO, "stop": 7}, "stop"),
        ({"model": "gptomni", "messages": HELLO, "max_tokens": 0}, "max_tokens"),
        ({"model": "gptomni", "messages": HELLO, "max_completion_tokens": -1}, "max_completion_tokens"),
        (
            {"model": "gptomni", "messages": [{"role": "user", "content": [
                {"type": "text", "text": "look"}, {"type": "image_url", "image_url": {"url": "data:,"}}]}]},
            "messages[0].content[1]",
        ),
        ({"model": "gptomni", "messages": [{"role": "user", "content": 42}]}, "messages[0].content"),
        ({"model": "gptomni", "messages": [{"role": "user", "content": [{"type": "text"}]}]}, "messages[0].content[0].text"),
        ({"model": "gptomni", "messages": [{"content": "x"}]}, "messages[0].role"),
        ({"model": "gptomni", "messages": [{"role": "user", "content": "   "}]}, "messages"),
    ],
)
def test_bad_requests_name_the_param(relay: Harness, body: dict[str, Any], param: str) -> None:
    assert_openai_error(relay.http().post("/v1/chat/completions", json=body), 400, param=param)


@pytest.mark.parametrize(("path", "base", "knob", "value"), [
    ("/v1/chat/completions", {"messages": HELLO}, "temperature", "hot"),
    ("/v1/chat/completions", {"messages": HELLO}, "temperature", 2.5),
    ("/v1/chat/completions", {"messages": HELLO}, "top_p", 1.5),
    ("/v1/chat/completions", {"messages": HELLO}, "presence_penalty", -3),
    ("/v1/chat/completions", {"messages": HELLO}, "frequency_penalty", "much"),
    ("/v1/chat/completions", {"messages": HELLO}, "seed", 1.5),
    ("/v1/completions", {"prompt": "Hi"}, "temperature", -0.1),
    ("/v1/completions", {"prompt": "Hi"}, "top_p", "all"),
    ("/v1/responses", {"input": "Hi"}, "temperature", "hot"),
    ("/v1/responses", {"input": "Hi"}, "top_p", 2),
])
def test_sampling_knobs_outside_openais_ranges_are_400(relay: Harness, path: str, base: dict[str, Any], knob: str,
                                                        value: object) -> None:
    # Ignored knobs are still checked: a client's typo is its 400, never a silent 200.
    body = {"model": "gptomni", **base, knob: value}
    assert_openai_error(relay.http().post(path, json=body), 400, param=knob)
    edge = {"temperature": 2, "top_p": 0, "presence_penalty": -2, "frequency_penalty": 2, "seed": 7}
    if path == "/v1/responses":
        edge = {"temperature": 0, "top_p": 1}
    assert relay.http().post(path, json={"model": "gptomni", **base, **edge}).status_code == 200


@pytest.mark.parametrize("raw", [b"{not json", b"\xff\xfe{}", b"[1, 2]", b""])
def test_unparseable_bodies_are_400(relay: Harness, raw: bytes) -> None:
    response = relay.http().post("/v1/chat/completions", content=raw, headers={"content-type": "application/json"})
    assert_openai_error(response, 400, code="invalid_json")


def test_sdk_sees_bad_request_error(relay: Harness) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        relay.client().chat.completions.create(model="gptomni", messages=HELLO, n=3)
    assert caught.value.body["param"] == "n"
    with pytest.raises(openai.BadRequestError) as caught:
        relay.client().chat.completions.create(model="gptomni", messages=HELLO, logprobs=True, top_logprobs=3,
                                               stream=True)
    assert caught.value.body["param"] == "logprobs"


def test_missing_and_wrong_keys_are_401(relay: Harness) -> None:
    response = httpx.post(f"{relay.url}/v1/chat/completions", json={"model": "gptomni", "messages": HELLO})
    assert_openai_error(response, 401, code="invalid_api_key")
    wrong = openai.OpenAI(base_url=f"{relay.url}/v1", api_key="sk-wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        wrong.chat.completions.create(model="gptomni", messages=HELLO)
    with pytest.raises(openai.AuthenticationError):
        wrong.models.list()
    wrong.close()


def test_unknown_route_and_model_are_404(relay: Harness) -> None:
    assert_openai_error(relay.http().get("/v1/nothing-here"), 404, code="unknown_url")
    with pytest.raises(openai.NotFoundError) as caught:
        relay.client().chat.completions.create(model="gpt-9", messages=HELLO)
    assert caught.value.body["param"] == "model"
    assert caught.value.body["code"] == "model_not_found"


def test_oversized_body_is_413(make_relay) -> None:  # noqa: ANN001
    relay = make_relay(max_body_bytes=2048)
    big = {"model": "gptomni", "messages": [{"role": "user", "content": "x" * 5000}]}
    assert_openai_error(relay.http().post("/v1/chat/completions", json=big), 413, code="request_too_large")

    def chunked() -> Any:  # no Content-Length: the limit must hold while reading
        yield b'{"model": "gptomni", "messages": [{"role": "user", "content": "'
        for _ in range(10):
            yield b"y" * 1000
        yield b'"}]}'

    response = relay.http().post("/v1/chat/completions", content=chunked(), headers={"content-type": "application/json"})
    assert_openai_error(response, 413)


def test_upstream_rate_limit_is_429_with_retry_after(make_relay) -> None:  # noqa: ANN001
    sim = SimulatorState(default=Behaviour(status=429, retry_after=7))
    relay = make_relay(sim=sim)
    response = relay.http().post("/v1/chat/completions", json={"model": "gptomni", "messages": HELLO, "stream": True})
    error = assert_openai_error(response, 429, code="credentials_cooling_down")
    assert 6 <= int(response.headers["retry-after"]) <= 7
    assert error["message"].count("cooling down") == 1 and "retry in" in error["message"]  # said once
    with pytest.raises(openai.RateLimitError):
        relay.client().chat.completions.create(model="gptomni", messages=HELLO)
    assert len(sim.received) == 1  # the cooling credential was not asked again


def test_upstream_server_error_is_502(make_relay) -> None:  # noqa: ANN001
    relay = make_relay(sim=SimulatorState(default=Behaviour(status=500)))
    response = relay.http().post("/v1/chat/completions", json={"model": "gptomni", "messages": HELLO})
    assert_openai_error(response, 502, code="upstream_error")
    assert "session" not in response.text


def test_no_credentials_is_503_and_not_ready(make_relay) -> None:  # noqa: ANN001
    relay = make_relay(cookies=[])
    with pytest.raises(openai.InternalServerError) as caught:
        relay.client().chat.completions.create(model="gptomni", messages=HELLO)
    assert caught.value.status_code == 503
    assert caught.value.body["code"] == "no_credentials"
    assert relay.http().get("/readyz").status_code == 503


def test_slow_first_byte_is_504(make_relay) -> None:  # noqa: ANN001
    relay = make_relay(sim=SimulatorState(default=Behaviour(first_byte_delay=3)), first_byte_timeout_seconds=0.5)
    response = relay.http().post("/v1/chat/completions", json={"model": "gptomni", "messages": HELLO, "stream": True})
    assert_openai_error(response, 504, code="upstream_timeout")


def test_mid_stream_cut_ends_with_an_error_event(make_relay) -> None:  # noqa: ANN001
    relay = make_relay(sim=SimulatorState(default=Behaviour(cut_after=3)))
    received: list[str] = []
    with pytest.raises(openai.APIError) as caught:
        for chunk in relay.client().chat.completions.create(model="gptomni", messages=HELLO, stream=True):
            received.append(chunk.choices[0].delta.content or "")
    assert "".join(received) == "Hello from the "
    assert caught.value.body["code"] == "upstream_error"
    with relay.http().stream("POST", "/v1/chat/completions",
                             json={"model": "gptomni", "messages": HELLO, "stream": True}) as response:
        events = [line for line in response.iter_lines() if line.startswith("data: ")]
    assert '"error"' in events[-1] and events[-1] != "data: [DONE]"


def test_mid_answer_cut_without_stream_is_502(make_relay) -> None:  # noqa: ANN001
    relay = make_relay(sim=SimulatorState(default=Behaviour(cut_after=3)))
    response = relay.http().post("/v1/chat/completions", json={"model": "gptomni", "messages": HELLO})
    assert_openai_error(response, 502, code="upstream_error")


def test_stalled_stream_times_out_mid_answer(make_relay) -> None:  # noqa: ANN001
    relay = make_relay(sim=SimulatorState(default=Behaviour(token_delay=2)), idle_timeout_seconds=0.3)
    with relay.http().stream("POST", "/v1/chat/completions",
                             json={"model": "gptomni", "messages": HELLO, "stream": True}) as response:
        events = [line for line in response.iter_lines() if line.startswith("data: ")]
    assert '"upstream_timeout"' in events[-1]


def test_unreachable_upstream_is_502_after_failover(make_relay) -> None:  # noqa: ANN001
    from tests.processes import free_port

    relay = make_relay(cookies=["session=a", "session=b"], upstream_url=f"http://127.0.0.1:{free_port()}")
    response = relay.http().post("/v1/chat/completions", json={"model": "gptomni", "messages": HELLO, "stream": True})
    error = assert_openai_error(response, 502, code="upstream_error")
    assert "connection failed" in error["message"]
    assert 'gptomni_failovers_total 1.0' in relay.metrics_text()
    assert relay.state.pool.total_in_flight() == 0


def test_every_answer_carries_a_request_id_the_sdk_reads(make_relay) -> None:  # noqa: ANN001
    # `e.request_id` (Node: `requestID`) is what a user quotes in a bug report: errors,
    # the models routes and unknown URLs carry `x-request-id` as answers do.
    relay = make_relay(sim=SimulatorState(default=Behaviour(status=429, retry_after=7)))
    client = relay.client()
    refusals: list[tuple[type[openai.APIStatusError], Any]] = [
        (openai.BadRequestError, lambda: client.chat.completions.create(model="gptomni", messages=HELLO, n=2)),
        (openai.NotFoundError, lambda: client.chat.completions.create(model="gpt-9", messages=HELLO)),
        (openai.NotFoundError, lambda: client.responses.create(model="gpt-9", input="Hello")),
        (openai.NotFoundError, lambda: client.models.retrieve("gpt-9")),
        (openai.NotFoundError, lambda: client.embeddings.create(model="gptomni", input="Hello")),
        (openai.RateLimitError, lambda: client.chat.completions.create(model="gptomni", messages=HELLO)),
        (openai.AuthenticationError, lambda: openai.OpenAI(base_url=f"{relay.url}/v1", api_key="sk-wrong",
                                                           max_retries=0).models.list()),
    ]
    ids = []
    for error_type, call in refusals:
        with pytest.raises(error_type) as caught:
            call()
        assert caught.value.request_id is not None and caught.value.request_id.startswith("req_"), error_type
        ids.append(caught.value.request_id)
    assert len(set(ids)) == len(ids)
    assert client.models.with_raw_response.list().request_id.startswith("req_")
    assert client.models.with_raw_response.retrieve("gptomni").request_id.startswith("req_")


def test_the_sdk_retries_a_429_after_its_retry_after(make_relay) -> None:  # noqa: ANN001
    # The SDK's own retry (max_retries) waits the Retry-After the relay sends; by then the
    # credential's cooldown is over and the relay asks GPT-Omni again.
    sim = SimulatorState(default=Behaviour(status=429, retry_after=1))
    relay = make_relay(sim=sim)
    client = openai.OpenAI(base_url=f"{relay.url}/v1", api_key=relay.api_key, max_retries=1)
    started = time.monotonic()
    with pytest.raises(openai.RateLimitError) as caught:
        client.chat.completions.create(model="gptomni", messages=HELLO)
    client.close()
    assert time.monotonic() - started >= 1  # it waited as told (a lower bound only)
    assert caught.value.response.headers["retry-after"] == "1" and caught.value.code == "credentials_cooling_down"
    assert len(sim.received) == 2  # the retry reached GPT-Omni once the cooldown ended
