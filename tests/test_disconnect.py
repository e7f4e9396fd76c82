"""Hanging up mid-stream cancels the upstream request and frees the credential slot."""

from __future__ import annotations

import asyncio
import time

import httpx
from gptomni_relay.simulator import Behaviour, SimulatorState

from tests.harness import Harness


async def test_client_disconnect_cancels_the_upstream_request(make_relay) -> None:  # noqa: ANN001
    sim = SimulatorState(default=Behaviour(token_delay=0.2, answer_words=100))
    relay: Harness = make_relay(sim=sim)
    async with httpx.AsyncClient(base_url=relay.url, headers={"Authorization": f"Bearer {relay.api_key}"}) as http:
        async with http.stream("POST", "/v1/chat/completions",
                               json={"model": "gptomni", "messages": [{"role": "user", "content": "long"}],
                                     "stream": True}) as response:
            lines = response.aiter_lines()
            while not (await anext(lines)).startswith("data: "):
                pass
            assert sim.active == 1
        # The client has hung up after the first event.
    deadline = time.monotonic() + 3
    while (sim.active or relay.runtime.pool.total_in_flight()) and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    assert sim.active == 0 and sim.unfinished == 1 and sim.completed == 0
    assert relay.runtime.pool.total_in_flight() == 0
    assert 'gptomni_requests_total{model="gptomni",status="499",stream="true"} 1.0' in relay.metrics_text()
