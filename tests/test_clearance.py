"""Cloudflare challenges: cloudscraper runs off the event loop, once for many requests."""

from __future__ import annotations

import asyncio
from typing import Any

import openai
import pytest

from gptomni_common.upstream.clearance import set_by
from gptomni_relay.simulator import Behaviour, SimulatorState

HELLO = [{"role": "user", "content": "Hello"}]


async def test_challenge_is_solved_once_then_streams_use_the_clearance(make_relay: Any) -> None:
    sim = SimulatorState(challenge="solvable", default=Behaviour(token_delay=0.05, answer_words=5))
    relay = make_relay(sim=sim, cookies=["session=alpha", "session=beta"])
    async with relay.async_client(http_client=openai.DefaultAioHttpClient(timeout=30)) as client:
        answers = await asyncio.gather(*(
            client.chat.completions.create(model="gptomni", messages=HELLO) for _ in range(20)
        ))
    assert all(a.choices[0].message.content for a in answers)
    assert sim.landing_hits == 1  # one cloudscraper solve served all twenty
    solver = relay.state.upstream.solver
    assert solver.solves == 1 and "cf_clearance" in solver.current.cookies
    chat = sim.received[-1]
    assert f"cf_clearance={sim.clearance_token}" in chat.headers["cookie"]
    assert chat.headers["user-agent"] == solver.current.user_agent
    assert {s.health.value for s in relay.state.pool.statuses()} == {"healthy"}


def test_unsolvable_challenge_is_503_with_retry_after_and_cools_the_credentials(make_relay: Any) -> None:
    # 503, not 429: the upstream is out of reach; the client is not the one going too fast.
    sim = SimulatorState(challenge="blocked")
    relay = make_relay(sim=sim, cookies=["session=alpha", "session=beta"], cooldown_base_seconds=10)
    http = relay.http()
    for _ in range(2):  # the request that met the challenges, then one while both cool down
        response = http.post("/v1/chat/completions", json={"model": "gptomni", "messages": HELLO})
        assert response.status_code == 503
        assert response.json()["error"]["code"] == "upstream_challenge"
        assert 1 <= int(response.headers["retry-after"]) <= 10
    assert 'outcome="challenge"} 1.0' in relay.metrics_text()
    assert {s.health.value for s in relay.state.pool.statuses()} == {"cooling"}


def test_a_rate_limit_among_challenges_is_still_429(make_relay: Any) -> None:
    sim = SimulatorState(challenge="blocked")
    relay = make_relay(sim=sim, cookies=["session=alpha"], cooldown_base_seconds=10)
    http = relay.http()
    assert http.post("/v1/chat/completions", json={"model": "gptomni", "messages": HELLO}).status_code == 503
    sim.challenge = "off"
    relay.state.pool.reinstate(relay.state.pool.statuses()[0].id)
    sim.set("session=alpha", status=429, retry_after=7)
    response = http.post("/v1/chat/completions", json={"model": "gptomni", "messages": HELLO})
    assert response.status_code == 429 and response.json()["error"]["code"] == "credentials_cooling_down"


@pytest.mark.parametrize(("host", "domain", "taken"), [
    ("gptomni.ai", "gptomni.ai", True),
    ("gptomni.ai", ".gptomni.ai", True),
    ("www.gptomni.ai", ".gptomni.ai", True),
    ("gptomni.ai", ".evil.example", False),
    ("gptomni.ai", "notgptomni.ai", False),
    ("gptomni.ai", ".ai", False),  # a top-level domain is no host's own
    ("gptomni.ai", "www.gptomni.ai", False),  # a sibling or child host's cookie
    ("127.0.0.1", "127.0.0.1", True),
    ("127.0.0.1", "0.0.1", False),
    ("gptomni.ai", "", False),
])
def test_only_the_upstream_hosts_own_cookies_are_taken(host: str, domain: str, taken: bool) -> None:
    assert set_by(host, domain) is taken
