"""A hostile or broken GPT-Omni (or something pretending to be it): whatever it sends,
the relay answers with a well-formed OpenAI response, fails over where another
credential may do better, and keeps its memory bounded."""

from __future__ import annotations

import gzip
import resource
import zlib

import httpx
import pytest

from gptomni_relay.simulator import SimulatorState
from tests.harness import Harness
from tests.test_errors import assert_openai_error

HELLO = {"model": "gptomni", "messages": [{"role": "user", "content": "Hello"}]}


def two_cookies(make_relay, **settings) -> Harness:  # noqa: ANN001
    return make_relay(sim=SimulatorState(), cookies=["session=bad", "session=good"], **settings)


def test_a_retry_after_of_400_digits_is_capped_not_an_overflow(make_relay) -> None:  # noqa: ANN001
    relay: Harness = make_relay(sim=SimulatorState(), cookies=["session=a"], cooldown_max_seconds=120)
    relay.sim.set("session=a", status=429, retry_after="9" * 400)
    http = relay.http()
    first = http.post("/v1/chat/completions", json=HELLO)
    assert_openai_error(first, 429, code="credentials_cooling_down")
    assert 1 <= int(first.headers["Retry-After"]) <= 120
    # The cooldown itself is capped too, and later requests are still answered properly.
    again = http.post("/v1/chat/completions", json=HELLO)
    assert_openai_error(again, 429, code="credentials_cooling_down")
    assert int(again.headers["Retry-After"]) <= 120


def test_a_day_long_retry_after_becomes_our_cooldown_cap(make_relay) -> None:  # noqa: ANN001
    relay: Harness = make_relay(sim=SimulatorState(), cookies=["session=a"], cooldown_max_seconds=60)
    relay.sim.set("session=a", status=429, retry_after=86400)
    response = relay.http().post("/v1/chat/completions", json=HELLO)
    assert_openai_error(response, 429, code="credentials_cooling_down")
    assert int(response.headers["Retry-After"]) <= 60


@pytest.mark.parametrize("content_type", ["text/plain; charset=x-no-such-charset", "text/plain; charset=\"\u00e9\""])
def test_an_unknown_charset_fails_over(make_relay, content_type: str) -> None:  # noqa: ANN001
    relay = two_cookies(make_relay)
    relay.sim.set("session=bad", content_type=content_type)
    for _ in range(4):  # whichever cookie is picked first, the answer comes from the good one
        completion = relay.client().chat.completions.create(model="gptomni", messages=HELLO["messages"])
        assert completion.choices[0].message.content.startswith("Hello from the GPT-Omni simulator")
    assert relay.state.pool.total_in_flight() == 0


def test_a_corrupt_compressed_body_fails_over(make_relay) -> None:  # noqa: ANN001
    relay = two_cookies(make_relay)
    relay.sim.set("session=bad", raw_body=b"\x1f\x8b\x08\x00garbage that is no gzip", content_encoding="gzip")
    completion = relay.client().chat.completions.create(model="gptomni", messages=HELLO["messages"])
    assert completion.choices[0].message.content


def test_an_encoding_we_did_not_ask_for_fails_over(make_relay) -> None:  # noqa: ANN001
    relay = two_cookies(make_relay)
    relay.sim.set("session=bad", raw_body=b"whatever", content_encoding="zstd")
    for _ in range(3):
        assert relay.client().chat.completions.create(model="gptomni", messages=HELLO["messages"]).choices


@pytest.mark.parametrize("stream", [False, True])
def test_a_compressed_answer_is_read_as_text(make_relay, stream: bool) -> None:  # noqa: ANN001
    relay: Harness = make_relay(sim=SimulatorState(), cookies=["session=a"])
    answer = "压缩的回答 — a compressed answer. " * 500
    relay.sim.set("session=a", raw_body=gzip.compress(answer.encode()), content_encoding="gzip")
    client = relay.client()
    if stream:
        chunks = client.chat.completions.create(model="gptomni", messages=HELLO["messages"], stream=True)
        text = "".join(chunk.choices[0].delta.content or "" for chunk in chunks if chunk.choices)
    else:
        text = client.chat.completions.create(model="gptomni", messages=HELLO["messages"]).choices[0].message.content
    assert text == answer


def _gzip_bomb(inflated_mb: int) -> bytes:
    compressor = zlib.compressobj(9, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    block = b"A" * (1024 * 1024)
    return b"".join([*(compressor.compress(block) for _ in range(inflated_mb)), compressor.flush()])


def test_a_gzip_bomb_is_refused_with_bounded_memory(make_relay) -> None:  # noqa: ANN001
    relay: Harness = make_relay(sim=SimulatorState(), cookies=["session=a"], max_answer_chars=1_000_000)
    bomb = _gzip_bomb(400)  # 400 MB of text in ~400 KB
    relay.sim.set("session=a", raw_body=bomb, content_encoding="gzip")
    peak_before_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    response = relay.http().post("/v1/chat/completions", json=HELLO)
    assert_openai_error(response, 502, code="upstream_answer_too_large")
    grown_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - peak_before_kb) / 1024
    assert grown_mb < 64, f"the relay's peak memory grew by {grown_mb:.0f} MB"
    assert relay.state.pool.total_in_flight() == 0


def test_a_streamed_gzip_bomb_flows_through_in_bounded_steps(make_relay) -> None:  # noqa: ANN001
    relay: Harness = make_relay(sim=SimulatorState(), cookies=["session=a"])
    relay.sim.set("session=a", raw_body=_gzip_bomb(100), content_encoding="gzip")
    peak_before_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    received = 0
    with httpx.Client(base_url=relay.url, headers={"Authorization": f"Bearer {relay.api_key}"}, timeout=60) as http:
        with http.stream("POST", "/v1/chat/completions", json={**HELLO, "stream": True}) as response:
            assert response.status_code == 200
            for line in response.iter_lines():
                received += len(line)
                if received > 20_000_000:
                    break  # the client has seen enough; hanging up ends the upstream answer too
    grown_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - peak_before_kb) / 1024
    assert received > 20_000_000
    assert grown_mb < 64, f"the relay's peak memory grew by {grown_mb:.0f} MB"
