"""The relay runs young garbage collections on a clock (serving.collect_young_objects_regularly)."""

from __future__ import annotations

import asyncio
import gc

from gptomni_relay.gc_tuning import collect_young_objects_regularly
from tests.polling import eventually


async def test_young_collections_run_on_a_clock_and_reach_the_middle_generation() -> None:
    collected: list[int] = []

    def note(phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            collected.append(info["generation"])

    gc.disable()  # only the clock's collections, none of CPython's own
    gc.callbacks.append(note)
    try:
        task = asyncio.create_task(collect_young_objects_regularly(0.01))
        # Counted in ticks, not in time: a busy machine makes the ticks late, not fewer.
        await eventually(lambda: collected.count(0) >= 15 and collected.count(1) >= 2, what="15 ticks")
        task.cancel()
    finally:
        gc.callbacks.remove(note)
        gc.enable()
    # Young every tick, the middle generation every tenth, never a full one.
    assert collected.count(0) >= 15 and collected.count(1) >= 2 and 2 not in collected
