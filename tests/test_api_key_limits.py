"""Keys from the operator's key set (docs/api-keys.md) as the relay enforces them: models,
expiry, requests per minute, streams in progress, tokens per day; the refusals as the
official OpenAI SDK sees them (typed errors, rate-limit headers); the limits held across
three relay processes sharing a real Redis."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from gptomni_common.api_key_set import key_hash
from gptomni_relay.edge.server import serve_app
from gptomni_relay.simulator import Behaviour, SimulatorState, build_simulator_app
from tests.harness import API_KEY, BackgroundLoop, Harness, sample_value
from tests.polling import wait_until
from tests.processes import relay_process
from tests.redis_server import RedisServer

SALT = "5a1f" * 8
MESSAGES = [{"role": "user", "content": "hello"}]


def key_of(name: str) -> str:
    return f"sk-test-{name}-" + "0" * 24


def write_key_set(path: Path, keys: dict[str, dict[str, Any]]) -> Path:
    """A key set as the operator publishes it: `keys` maps a name to its entry's other fields."""
    document = {"version": 1, "salt": SALT,
                "keys": [{"name": name, "hash": key_hash(SALT, key_of(name)), **entry} for name, entry in keys.items()]}
    path.write_text(json.dumps(document))
    return path


def client(relay: Harness, name: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{relay.url}/v1", api_key=key_of(name), max_retries=0)


def chat(relay_url: str, key: str, model: str = "gptomni", **extra: Any) -> httpx.Response:
    return httpx.post(f"{relay_url}/v1/chat/completions", headers={"Authorization": f"Bearer {key}"},
                      json={"model": model, "messages": MESSAGES, **extra}, timeout=30)


@pytest.fixture
def keyed_relay(make_relay, tmp_path: Path) -> Harness:  # noqa: ANN001
    past = (datetime.now(UTC) - timedelta(minutes=1)).isoformat()
    key_set = write_key_set(tmp_path / "api-keys.json", {
        "open": {},
        "one-model": {"models": ["gptomni"]},
        "expired": {"expiresAt": past},
        "rpm": {"limits": {"requestsPerMinute": 2}},
        "budget": {"limits": {"tokensPerDay": 5}},
    })
    return make_relay(api_key_set_file=key_set, models=["gptomni", "gptomni-large"], credentials_poll_seconds=0.1)


def test_a_model_the_key_may_not_use_is_403_and_others_pass(keyed_relay: Harness) -> None:
    with pytest.raises(openai.PermissionDeniedError) as refused:
        client(keyed_relay, "one-model").chat.completions.create(model="gptomni-large", messages=MESSAGES)
    assert refused.value.status_code == 403
    assert refused.value.body["code"] == "model_not_allowed" and refused.value.body["param"] == "model"
    assert client(keyed_relay, "one-model").chat.completions.create(model="gptomni", messages=MESSAGES).choices
    assert client(keyed_relay, "open").chat.completions.create(model="gptomni-large", messages=MESSAGES).choices
    assert sample_value(keyed_relay.metrics_text(), "gptomni_api_key_refusals_total",
                        api_key="one-model", reason="model") == 1


def test_an_expired_key_gets_the_answer_of_a_key_that_never_existed(keyed_relay: Harness) -> None:
    with pytest.raises(openai.AuthenticationError) as expired:
        client(keyed_relay, "expired").chat.completions.create(model="gptomni", messages=MESSAGES)
    unknown = chat(keyed_relay.url, key_of("never-was"))
    assert unknown.status_code == expired.value.status_code == 401
    assert expired.value.response.json() == unknown.json()
    # Static keys keep working beside the key set, with no limits and no rate-limit headers.
    response = chat(keyed_relay.url, API_KEY)
    assert response.status_code == 200 and "x-ratelimit-limit-requests" not in response.headers


def test_requests_per_minute_refuse_with_the_headers_the_sdk_reads(keyed_relay: Harness) -> None:
    sdk = client(keyed_relay, "rpm")
    first = sdk.chat.completions.with_raw_response.create(model="gptomni", messages=MESSAGES)
    assert first.headers["x-ratelimit-limit-requests"] == "2"
    assert first.headers["x-ratelimit-remaining-requests"] == "1"
    second = sdk.chat.completions.with_raw_response.create(model="gptomni", messages=MESSAGES, stream=True)
    assert second.headers["x-ratelimit-remaining-requests"] == "0"
    assert "".join(chunk.choices[0].delta.content or "" for chunk in second.parse() if chunk.choices)
    with pytest.raises(openai.RateLimitError) as refused:
        sdk.chat.completions.create(model="gptomni", messages=MESSAGES)
    error = refused.value
    assert error.body["code"] == "rate_limit_exceeded"
    assert error.response.headers["x-ratelimit-remaining-requests"] == "0"
    assert 1 <= int(error.response.headers["retry-after"]) <= 60
    assert error.response.headers["x-ratelimit-reset-requests"].endswith("s")
    # Another key is not touched by this one's limit.
    assert chat(keyed_relay.url, key_of("open")).status_code == 200


def test_tokens_per_day_stop_that_key_only(keyed_relay: Harness) -> None:
    first = chat(keyed_relay.url, key_of("budget"))  # the request that crosses the budget finishes
    assert first.status_code == 200 and first.json()["usage"]["total_tokens"] > 5
    assert first.headers["x-ratelimit-limit-tokens"] == "5"
    with pytest.raises(openai.RateLimitError) as refused:
        client(keyed_relay, "budget").chat.completions.create(model="gptomni", messages=MESSAGES)
    assert refused.value.body["code"] == refused.value.body["type"] == "insufficient_quota"  # as OpenAI sends it
    assert refused.value.response.headers["x-ratelimit-remaining-tokens"] == "0"
    assert int(refused.value.response.headers["retry-after"]) >= 1
    assert chat(keyed_relay.url, key_of("open")).status_code == 200
    metrics = keyed_relay.metrics_text()
    assert sample_value(metrics, "gptomni_api_key_refusals_total", api_key="budget", reason="tokens") == 1
    assert sample_value(metrics, "gptomni_api_key_budget_used_ratio", api_key="budget") >= 1


def test_a_key_removed_from_the_set_is_refused_at_the_next_poll(keyed_relay: Harness, tmp_path: Path) -> None:
    assert chat(keyed_relay.url, key_of("open")).status_code == 200
    write_key_set(tmp_path / "api-keys.json", {"rpm": {"limits": {"requestsPerMinute": 2}}})
    wait_until(lambda: chat(keyed_relay.url, key_of("open")).status_code == 401, step=0.1,
               what="the removed key refused")


async def test_limits_hold_across_three_relay_processes_on_one_redis(redis_server: RedisServer,
                                                                    servers: BackgroundLoop, tmp_path: Path) -> None:
    sim = SimulatorState(default=Behaviour(token_delay=0.1, answer_words=30))  # ~3 s per answer
    upstream = servers.enter(serve_app(build_simulator_app(sim)))
    key_set = write_key_set(tmp_path / "api-keys.json", {
        "streams": {"limits": {"maxConcurrentStreams": 2}},
        "rpm": {"limits": {"requestsPerMinute": 5}},
        "budget": {"limits": {"tokensPerDay": 5}},
        "open": {},
    })
    env = {"GPTOMNI_UPSTREAM_URL": upstream.url, "GPTOMNI_API_KEY_SET_FILE": str(key_set),
           "GPTOMNI_CREDENTIALS": '["session=keys"]', "GPTOMNI_DEFAULT_MAX_CONCURRENCY": "100",
           "GPTOMNI_REDIS_URL": redis_server.url, "GPTOMNI_REPLICAS": "3", "GPTOMNI_HOST": "127.0.0.1",
           "GPTOMNI_LOG_FORMAT": "text"}
    with relay_process(env=env) as a, relay_process(env=env) as b, relay_process(env=env) as c:
        urls = [a.url, b.url, c.url]

        async def post(url: str, name: str, **extra: Any) -> httpx.Response:
            return await asyncio.to_thread(chat, url, key_of(name), **extra)

        # Six streams of one key at once, two per replica: two run, four are refused.
        responses = await asyncio.gather(*(post(url, "streams", stream=True) for url in urls * 2))
        statuses = sorted(response.status_code for response in responses)
        assert statuses == [200, 200, 429, 429, 429, 429]
        assert {r.json()["error"]["code"] for r in responses if r.status_code == 429} == {"rate_limit_exceeded"}
        # Once they are done, the key may stream again (the slots were given back).
        assert (await post(b.url, "streams")).status_code == 200

        # Five requests per minute for the deployment, whichever replica takes them.
        statuses = [(await post(urls[index % 3], "rpm")).status_code for index in range(8)]
        assert statuses == [200] * 5 + [429] * 3

        # A budget spent on one replica stops the key on the others, and only that key.
        assert (await post(a.url, "budget")).status_code == 200
        for url in (b.url, c.url):
            refused = await post(url, "budget")
            assert refused.status_code == 429 and refused.json()["error"]["code"] == "insufficient_quota"
            assert (await post(url, "open")).status_code == 200
        for relay in (a, b, c):
            assert key_of("budget") not in Path(relay.log.name).read_text()
