"""The relay runs young garbage collections on a clock (serving.collect_young_objects_regularly)."""

from __future__ import annotations

import asyncio
import gc

from gptomni_relay.gc_tuning import collect_young_objects_regularly


async def test_young_collections_run_on_a_clock_and_reach_the_middle_generation() -> None:
    collected: list[int] = []

    def note(phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            collected.append(info["generation"])

    gc.disable()  # only the clock's collections, none of CPython's own
    gc.callbacks.append(note)
    try:
        task = asyncio.create_task(collect_young_objects_regularly(0.01))
        await asyncio.sleep(0.5)
        task.cancel()
    finally:
        gc.callbacks.remove(note)
        gc.enable()
    # ~50 ticks: young every time, the middle generation every tenth, never a full one.
    assert collected.count(0) >= 15 and collected.count(1) >= 2 and 2 not in collected
