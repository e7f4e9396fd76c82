"""Serve the GPT-Omni simulator alone on 127.0.0.1 (a separate process for benchmarks)."""

from __future__ import annotations

import argparse
import asyncio

from gptomni_relay.edge.server import serve_app
from gptomni_relay.gc_tuning import tune_gc_for_serving
from gptomni_relay.simulator import Behaviour, SimulatorState, build_simulator_app


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--first-byte-delay", type=float, default=0.0)
    parser.add_argument("--token-delay", type=float, default=0.0)
    parser.add_argument("--answer-words", type=int, default=20)
    parser.add_argument("--stamp-times", action="store_true", help="first piece carries arrival/sent times")
    args = parser.parse_args()
    state = SimulatorState(default=Behaviour(first_byte_delay=args.first_byte_delay, token_delay=args.token_delay,
                                             answer_words=args.answer_words, stamp_times=args.stamp_times))
    async with serve_app(build_simulator_app(state), port=args.port):
        tune_gc_for_serving()  # the stand-in for GPT-Omni should not add our GC pauses to both sides
        await asyncio.Event().wait()


if __name__ == "__main__":
    try:
        import uvloop

        uvloop.run(main())
    except KeyboardInterrupt:
        pass
