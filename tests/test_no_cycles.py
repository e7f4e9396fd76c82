"""A finished request leaves no reference cycles behind, however it ended.

Whatever a request leaves in a cycle stays in memory until the garbage collector walks it,
and every object the collector walks lengthens its pauses: at 100 open streams a young
collection paused the relay's event loop for 8-17 ms, most of it spent on finished
requests that a cancelled helper task kept alive (docs/performance.md). These tests keep
it that way: with the collector saving everything it would free, no relay object of a
finished request may show up. The simulator runs in the same process and leaves cycles
of its own (Starlette's streaming response); those are not counted.
"""

from __future__ import annotations

import gc
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import httpx
import pytest
from uvicorn.protocols.http.httptools_impl import RequestResponseCycle

from gptomni_relay.simulator import Behaviour, SimulatorState
from tests.harness import Harness
from tests.polling import wait_until

BODY = {"model": "gptomni", "messages": [{"role": "user", "content": "cycles"}]}


@contextmanager
def cyclic_garbage() -> Iterator[list[object]]:
    """Objects that only the cycle collector could have freed while the block ran."""
    gc.collect()
    found: list[object] = []
    gc.set_debug(gc.DEBUG_SAVEALL)
    try:
        yield found
        gc.collect()
        found.extend(gc.garbage)
    finally:
        gc.set_debug(0)
        gc.garbage.clear()


def relay_objects(objects: list[object], relay: Harness) -> list[str]:
    def is_relays(o: object) -> bool:
        module = type(o).__module__
        if isinstance(o, RequestResponseCycle):
            return o.scope["server"][1] == relay.relay_server.port
        return (module.startswith("gptomni_relay.") and module != "gptomni_relay.simulator") or module.startswith("aiohttp.")

    return sorted({type(o).__module__ + "." + type(o).__qualname__ for o in objects if is_relays(o)})


def streamed(http: httpx.Client, relay: Harness) -> None:
    http.post("/v1/chat/completions", json={**BODY, "stream": True}).read()


def answered(http: httpx.Client, relay: Harness) -> None:
    http.post("/v1/chat/completions", json=BODY).read()


def refused(http: httpx.Client, relay: Harness) -> None:
    assert http.post("/v1/chat/completions", json={**BODY, "model": "no-such-model"}).status_code == 404


def hung_up(http: httpx.Client, relay: Harness) -> None:
    def hung_up_requests() -> float:  # read in the process: a scrape would make relay objects of its own
        return relay.state.metrics.registry.get_sample_value(
            "gptomni_requests_total", {"model": "gptomni", "status": "499", "stream": "true"}) or 0.0

    before = hung_up_requests()
    with http.stream("POST", "/v1/chat/completions", json={**BODY, "stream": True}) as response:
        next(line for line in response.iter_lines() if line.startswith("data: "))
    # The relay notices, cancels and cleans up: the request is counted as it ends.
    wait_until(lambda: hung_up_requests() > before and relay.state.pool.total_in_flight() == 0,
               what="the hung-up request finished")


# Rate limited: every request must reach GPT-Omni's 429 (the failed-attempt path), so the
# cooldown it causes is 1 ms; with a cooldown of seconds the pool alone would refuse the later
# requests, and the attempt path would run inside the watched block only on a slow machine.
SCENARIOS: dict[str, tuple[Behaviour, list[Callable[[httpx.Client, Harness], None]], dict[str, float]]] = {
    "answered": (Behaviour(token_delay=0.002, answer_words=5), [streamed, answered, refused], {}),
    "cut mid-answer": (Behaviour(cut_after=3), [streamed, answered], {}),
    "no first byte in time": (Behaviour(first_byte_delay=3), [streamed, answered], {}),
    "rate limited": (Behaviour(status=429, retry_after=1), [streamed, answered], {"cooldown_max_seconds": 0.001}),
    "client hung up": (Behaviour(token_delay=0.2, answer_words=50), [hung_up], {}),
}


@pytest.mark.parametrize("scenario", list(SCENARIOS))
def test_finished_requests_leave_no_reference_cycles(make_relay, scenario: str) -> None:  # noqa: ANN001
    behaviour, requests, settings = SCENARIOS[scenario]
    relay: Harness = make_relay(sim=SimulatorState(default=behaviour), cookies=["session=a", "session=b"],
                                first_byte_timeout_seconds=0.3, **settings)
    with httpx.Client(base_url=relay.url, headers={"Authorization": f"Bearer {relay.api_key}"}, timeout=10) as http:
        streamed(http, relay)  # warm-up: first-use caches are not garbage
        with cyclic_garbage() as garbage:
            for request in requests * 2:
                request(http, relay)
    assert relay_objects(garbage, relay) == []
    assert relay.state.pool.total_in_flight() == 0
    if behaviour.status == 429:
        assert len(relay.sim.received) >= 2 * len(requests) * 2  # each request's two attempts reached GPT-Omni
