"""The relay with a stopwatch on its side of every streamed request (for latency_breakdown.py).

Runs the ordinary relay CLI, with two calls wrapped, not changed: the app's entry and the
event-stream writer. Per streamed request it notes when the request reached the app, when
the first chunk was ready and when it was written, and the simulator's stamp that the
first piece carries (so the driver can join the relay's record with its own). It also
notes every garbage-collector pause and every event-loop stall, and writes it all as
JSON to $GPTOMNI_TIMINGS_OUT when the relay exits. All clocks are CLOCK_MONOTONIC, which
every process on the machine shares.
"""

from __future__ import annotations

import asyncio
import atexit
import gc
import json
import os
import re
import sys
import time
from collections.abc import AsyncGenerator
from typing import Any

from gptomni_relay import app as app_module
from gptomni_relay import cli
from gptomni_relay.openai_api import event_stream as event_stream_module

STAMP = re.compile(rb"\[(\d+\.\d+) \d+\.\d+\] ")
STALL_PROBE_SECONDS = 0.005
STALL_REPORTED_SECONDS = 0.002  # lateness of the probe's timer beyond this is a stall


class Timings:
    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []
        self.gc_pauses: list[tuple[float, float, int, float]] = []  # start, wall, generation, cpu
        self.stalls: list[tuple[float, float, float]] = []  # start, lateness, relay cpu in the window
        self._gc_started = (0.0, 0.0)
        self._probe: asyncio.Task[None] | None = None

    def on_gc(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._gc_started = (time.monotonic(), time.thread_time())
        else:
            wall, cpu = self._gc_started
            self.gc_pauses.append((wall, time.monotonic() - wall, info["generation"], time.thread_time() - cpu))

    async def probe_stalls(self) -> None:
        while True:
            wall, cpu = time.monotonic(), time.thread_time()
            await asyncio.sleep(STALL_PROBE_SECONDS)
            late = time.monotonic() - wall - STALL_PROBE_SECONDS
            if late > STALL_REPORTED_SECONDS:
                self.stalls.append((wall, late, time.thread_time() - cpu))

    def start_probe(self) -> None:
        if self._probe is None:
            self._probe = asyncio.get_running_loop().create_task(self.probe_stalls())

    def dump(self) -> None:
        out = os.environ.get("GPTOMNI_TIMINGS_OUT")
        if out:
            with open(out, "w") as handle:
                json.dump({"requests": self.requests, "gc_pauses": self.gc_pauses, "stalls": self.stalls}, handle)


timings = Timings()
app_entry = app_module.RelayApp.__call__
write_events = event_stream_module.EventStreamResponse.__call__


async def timed_app_entry(self: Any, scope: Any, receive: Any, send: Any) -> None:
    scope["bench.entered"] = time.monotonic()
    timings.start_probe()
    await app_entry(self, scope, receive, send)


async def timed_write_events(self: Any, scope: Any, receive: Any, send: Any) -> None:
    record: dict[str, Any] = {"entered": scope.get("bench.entered")}
    events = self.events

    async def noting_the_first_event() -> AsyncGenerator[bytes, None]:
        first = True
        async for event in events:
            if first:
                record["first_ready"] = time.monotonic()
                stamp = STAMP.search(event)
                record["stamp"] = stamp[1].decode() if stamp else None
            yield event
            if first:
                record["first_written"] = time.monotonic()
                first = False

    self.events = noting_the_first_event()
    try:
        await write_events(self, scope, receive, send)
    finally:
        await events.aclose()
        if record.get("stamp"):
            timings.requests.append(record)


def main() -> None:
    app_module.RelayApp.__call__ = timed_app_entry  # type: ignore[method-assign]
    event_stream_module.EventStreamResponse.__call__ = timed_write_events  # type: ignore[method-assign]
    gc.callbacks.append(timings.on_gc)
    atexit.register(timings.dump)
    raise SystemExit(cli.main(sys.argv[1:]))


if __name__ == "__main__":
    main()
