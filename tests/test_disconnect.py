"""A client that hangs up (mid-stream, during silence, or on a non-streamed request) cancels
the upstream request and frees the credential slot; pings keep silent streams open."""

from __future__ import annotations

import asyncio
import json
import socket
import time

import httpx
import pytest

from gptomni_relay.settings import DEMO_API_KEY
from gptomni_relay.simulator import Behaviour, SimulatorState
from tests.harness import Harness, sample_value
from tests.polling import eventually, wait_until
from tests.processes import relay_process

MESSAGES = [{"role": "user", "content": "long"}]


async def read_first_event_and_hang_up(relay: Harness, sim: SimulatorState) -> None:
    async with httpx.AsyncClient(base_url=relay.url, headers={"Authorization": f"Bearer {relay.api_key}"}) as http:
        async with http.stream("POST", "/v1/chat/completions",
                               json={"model": "gptomni", "messages": MESSAGES, "stream": True}) as response:
            lines = response.aiter_lines()
            while not (await anext(lines)).startswith("data: "):
                pass
            assert sim.active == 1


def hung_up_requests(relay: Harness, stream: bool) -> float:
    return sample_value(relay.metrics_text(), "gptomni_requests_total", model="gptomni", status="499",
                        stream=str(stream).lower())


async def seconds_until_released(relay: Harness, sim: SimulatorState) -> float:
    """How long after a hang-up the upstream request and the credential slot are gone (≤ 3 s)."""
    hung_up = time.monotonic()
    await eventually(lambda: not (sim.active or relay.state.pool.total_in_flight()), timeout=3, step=0.02)
    assert sim.completed == 0
    return time.monotonic() - hung_up


async def test_client_disconnect_cancels_the_upstream_request(make_relay) -> None:  # noqa: ANN001
    sim = SimulatorState(default=Behaviour(token_delay=0.2, answer_words=100))
    relay: Harness = make_relay(sim=sim)
    await read_first_event_and_hang_up(relay, sim)
    await seconds_until_released(relay, sim)
    assert sim.unfinished == 1
    assert 'gptomni_requests_total{model="gptomni",status="499",stream="true"} 1.0' in relay.metrics_text()


async def test_hang_up_during_upstream_silence_cancels_at_once(make_relay) -> None:  # noqa: ANN001
    """No piece is due for 5 s: the hang-up itself, not the next write, must end the request."""
    sim = SimulatorState(default=Behaviour(token_delay=5.0, answer_words=3))
    relay: Harness = make_relay(sim=sim)
    await read_first_event_and_hang_up(relay, sim)
    assert await seconds_until_released(relay, sim) < 1.0


async def test_pings_keep_a_silent_stream_open_and_clients_ignore_them(make_relay) -> None:  # noqa: ANN001
    sim = SimulatorState(default=Behaviour(token_delay=0.7, answer_words=3))
    relay: Harness = make_relay(sim=sim, sse_ping_seconds=0.2)
    body = {"model": "gptomni", "messages": [{"role": "user", "content": "slow"}], "stream": True}
    async with httpx.AsyncClient(base_url=relay.url, headers={"Authorization": f"Bearer {relay.api_key}"}) as http:
        async with http.stream("POST", "/v1/chat/completions", json=body) as response:
            lines = [line async for line in response.aiter_lines() if line]
    pings = [i for i, line in enumerate(lines) if line == ": ping"]
    data = [line for line in lines if line.startswith("data: ")]
    assert len(pings) >= 4 and len(pings) + len(data) == len(lines)
    assert 0 < pings[0] < pings[-1] < len(lines) - 1  # between pieces, none after the end
    async with relay.async_client() as client:
        stream = await client.chat.completions.create(model="gptomni", messages=body["messages"], stream=True)
        text = "".join([chunk.choices[0].delta.content or "" async for chunk in stream if chunk.choices])
    assert len(text.split()) == 3


async def test_hang_up_without_streaming_cancels_the_upstream_request(make_relay) -> None:  # noqa: ANN001
    sim = SimulatorState(default=Behaviour(token_delay=0.5, answer_words=20))
    relay: Harness = make_relay(sim=sim)
    async with httpx.AsyncClient(base_url=relay.url, headers={"Authorization": f"Bearer {relay.api_key}"}) as http:
        request = asyncio.ensure_future(http.post("/v1/chat/completions", json={"model": "gptomni", "messages": MESSAGES}))
        await eventually(lambda: sim.active == 1, timeout=3, step=0.02)
        request.cancel()  # the client gives up and closes its connection
        await asyncio.gather(request, return_exceptions=True)
    assert await seconds_until_released(relay, sim) < 1.0
    assert 'gptomni_requests_total{model="gptomni",status="499",stream="false"} 1.0' in relay.metrics_text()


async def hang_up_while(relay: Harness, condition, body: dict) -> None:  # noqa: ANN001
    """Sends `body`, waits (≤ 3 s) until `condition()` holds, then gives up on the request."""
    async with httpx.AsyncClient(base_url=relay.url, headers={"Authorization": f"Bearer {relay.api_key}"}) as http:
        request = asyncio.ensure_future(http.post("/v1/chat/completions", json=body))
        await eventually(condition, timeout=3, step=0.02)
        request.cancel()
        await asyncio.gather(request, return_exceptions=True)


async def test_hang_up_while_queued_for_a_slot_never_reaches_upstream(make_relay) -> None:  # noqa: ANN001
    sim = SimulatorState(default=Behaviour(token_delay=0.3, answer_words=10))
    relay: Harness = make_relay(sim=sim, default_max_concurrency=1, acquire_timeout_seconds=10)
    async with relay.async_client() as client:
        holder = asyncio.ensure_future(client.chat.completions.create(model="gptomni", messages=MESSAGES))
        await eventually(lambda: sim.active == 1, timeout=3, step=0.02)
        queued = lambda: relay.state.pool._waiters != []  # noqa: E731, SLF001
        await hang_up_while(relay, queued, {"model": "gptomni", "messages": MESSAGES, "stream": True})
        # The hung-up request is over once it is counted; the queue itself is what must be left.
        await eventually(lambda: hung_up_requests(relay, stream=True) == 1)
        assert relay.state.pool._waiters == []  # noqa: SLF001
        await holder
    assert len(sim.received) == 1  # only the request that held the slot ever reached GPT-Omni


async def test_hang_up_between_failover_attempts_stops_failing_over(make_relay) -> None:  # noqa: ANN001
    sim = SimulatorState()
    sim.set("session=a", first_byte_delay=10)  # silent: the relay waits for its first byte
    sim.set("session=b", first_byte_delay=10)
    relay: Harness = make_relay(sim=sim, cookies=["session=a", "session=b"], first_byte_timeout_seconds=1.5)
    await hang_up_while(relay, lambda: sim.active == 1, {"model": "gptomni", "messages": MESSAGES})
    # The request ends when its handler does: had failover gone on, a second attempt would
    # have started at the first one's timeout, before the end.
    await eventually(lambda: hung_up_requests(relay, stream=False) == 1)
    assert len(sim.received) == 1 and sim.active == 0
    assert relay.state.pool.total_in_flight() == 0


@pytest.mark.timeout(120)
def test_a_hang_up_with_a_pipelined_request_behind_the_stream_is_quiet_and_frees_the_slot() -> None:
    # The guard stops reading while a pipelined request is held, so the server only learns
    # of the hang-up from a failed write; the next write used to raise uvloop's RuntimeError
    # and log two ERROR tracebacks per hang-up.
    body = json.dumps({"model": "gptomni", "stream": True, "messages": MESSAGES}).encode()
    head = (f"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {DEMO_API_KEY}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n").encode()
    pipelined = b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"
    env = {"GPTOMNI_DEMO_ANSWER_WORDS": "100000", "GPTOMNI_DEMO_TOKEN_DELAY_SECONDS": "0.005"}
    with relay_process("--demo", env=env) as relay:
        for _ in range(5):
            with socket.create_connection(("127.0.0.1", relay.port), timeout=10) as sock:
                sock.sendall(head + body + pipelined)
                assert sock.recv(2000).startswith(b"HTTP/1.1 200")

        def every_stream_ended() -> bool:
            metrics = httpx.get(f"{relay.metrics_url}/metrics", timeout=5).text
            return sample_value(metrics, "gptomni_active_streams") + sample_value(metrics, "gptomni_credential_in_flight") == 0

        wait_until(every_stream_ended, timeout=30, step=0.1)
        logged = relay.output()
    assert '"level": "ERROR"' not in logged, logged[-2000:]
    assert "Traceback" not in logged, logged[-2000:]
