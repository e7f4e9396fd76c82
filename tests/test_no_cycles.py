"""A finished request leaves no reference cycles behind.

Whatever a request leaves in a cycle stays in memory until the garbage collector walks it,
and every object the collector walks lengthens its pauses: at 100 open streams a young
collection paused the relay's event loop for 8-17 ms, most of it spent on finished
requests that a cancelled helper task kept alive (docs/performance.md). This test keeps
it that way: with the collector saving everything it would free, no relay object of a
finished request may show up.
"""

from __future__ import annotations

import gc
from collections.abc import Iterator
from contextlib import contextmanager

import httpx
from gptomni_relay.simulator import Behaviour, SimulatorState

from tests.harness import Harness

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


def relay_objects(objects: list[object]) -> list[str]:
    names = {type(o).__module__ + "." + type(o).__qualname__ for o in objects}
    return sorted(name for name in names if name.startswith(("gptomni_relay.", "uvicorn.", "starlette.", "aiohttp.")))


def test_finished_requests_leave_no_reference_cycles(make_relay) -> None:  # noqa: ANN001
    relay: Harness = make_relay(sim=SimulatorState(default=Behaviour(token_delay=0.002, answer_words=5)))
    with httpx.Client(base_url=relay.url, headers={"Authorization": f"Bearer {relay.api_key}"}, timeout=10) as http:
        http.post("/v1/chat/completions", json={**BODY, "stream": True}).read()  # warm-up: first-use caches
        with cyclic_garbage() as garbage:
            for _ in range(3):
                streamed = http.post("/v1/chat/completions", json={**BODY, "stream": True})
                assert streamed.status_code == 200 and streamed.text.endswith("data: [DONE]\n\n")
                answered = http.post("/v1/chat/completions", json=BODY)
                assert answered.status_code == 200
                refused = http.post("/v1/chat/completions", json={**BODY, "model": "no-such-model"})
                assert refused.status_code == 404
    assert relay_objects(garbage) == []
