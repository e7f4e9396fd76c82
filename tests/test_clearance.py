"""Cloudflare challenges: cloudscraper runs off the event loop, once for many requests."""

from __future__ import annotations

import asyncio
from typing import Any

import openai

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


def test_unsolvable_challenge_cools_the_credential_down(make_relay: Any) -> None:
    sim = SimulatorState(challenge="blocked")
    relay = make_relay(sim=sim, cookies=["session=alpha"], cooldown_base_seconds=10)
    response = relay.http().post("/v1/chat/completions", json={"model": "gptomni", "messages": HELLO})
    assert response.status_code == 429
    assert response.json()["error"]["code"] == "credentials_cooling_down"
    assert int(response.headers["retry-after"]) == 10
    assert 'outcome="challenge"} 1.0' in relay.metrics_text()
