"""The relay process as a user starts it: README's demo command, secure defaults, draining."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import threading
import time

import openai

from gptomni_relay.settings import DEMO_API_KEY
from tests.processes import relay_process

STREAMS = 200


def test_demo_mode_serves_the_openai_sdk_and_prints_its_key() -> None:
    with relay_process("--demo", env={"GPTOMNI_DEMO_TOKEN_DELAY_SECONDS": "0"}) as relay:
        client = openai.OpenAI(base_url=f"{relay.url}/v1", api_key=DEMO_API_KEY, max_retries=0)
        answer = client.chat.completions.create(model="gptomni", messages=[{"role": "user", "content": "ping"}])
        assert answer.choices[0].message.content == "Hello from the GPT-Omni simulator! You said: ping"
        streamed = client.chat.completions.create(
            model="gptomni", messages=[{"role": "user", "content": "ping"}], stream=True
        )
        assert "".join(c.choices[0].delta.content or "" for c in streamed).endswith("ping")
        client.close()
        relay.process.send_signal(signal.SIGTERM)
        relay.process.wait(20)
        output = relay.output()
        assert DEMO_API_KEY in output
    # Every log line is one JSON object a log pipeline can take as it is.
    log_lines = [json.loads(line) for line in output.splitlines() if line.startswith("{")]
    assert any(line["message"] == "chat completion finished" for line in log_lines)
    assert all({"asctime", "level", "name", "message"} <= line.keys() for line in log_lines)
    assert "\x1b" not in output and not any("color_message" in line for line in log_lines)


def test_refuses_to_start_without_an_api_key() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GPTOMNI_")}
    result = subprocess.run([sys.executable, "-m", "gptomni_relay"], env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert "no API key configured" in result.stderr


def test_200_concurrent_streams_through_one_process() -> None:
    """≥200 streams against a slow upstream are all open at once in one relay process."""
    env = {
        "GPTOMNI_DEMO_FIRST_BYTE_DELAY_SECONDS": "0.5",
        "GPTOMNI_DEMO_TOKEN_DELAY_SECONDS": "0.1",
        "GPTOMNI_DEMO_ANSWER_WORDS": "10",
    }
    with relay_process("--demo", env=env) as relay:

        async def run_streams() -> list[tuple[float, float, str]]:
            # The SDK's aiohttp transport: httpx's pool would make the *client* the bottleneck.
            async with openai.AsyncOpenAI(base_url=f"{relay.url}/v1", api_key=DEMO_API_KEY, max_retries=0,
                                          http_client=openai.DefaultAioHttpClient(timeout=60)) as client:

                async def one() -> tuple[float, float, str]:
                    """When the first piece came, when the stream ended, and the text."""
                    stream = await client.chat.completions.create(
                        model="gptomni", messages=[{"role": "user", "content": "go"}], stream=True
                    )
                    pieces, first = [], 0.0
                    async for chunk in stream:
                        if chunk.choices:
                            first = first or time.monotonic()
                            pieces.append(chunk.choices[0].delta.content or "")
                    return first, time.monotonic(), "".join(pieces)

                return await asyncio.wait_for(asyncio.gather(*(one() for _ in range(STREAMS))), timeout=60)

        streams = asyncio.run(run_streams())
    answers = [text for _, _, text in streams]
    assert len(answers) == STREAMS and set(answers) == {answers[0]} and answers[0].endswith("answer back.")
    # Every stream had its first piece before any stream ended: all were open together.
    # Serialised handling (a blocking call, a small thread pool) cannot do that.
    last_first_piece = max(first for first, _, _ in streams)
    first_end = min(end for _, end, _ in streams)
    assert last_first_piece < first_end


def test_sigterm_drains_open_streams() -> None:
    env = {"GPTOMNI_DEMO_TOKEN_DELAY_SECONDS": "0.1", "GPTOMNI_DEMO_ANSWER_WORDS": "20",
           "GPTOMNI_SHUTDOWN_GRACE_SECONDS": "10"}
    with relay_process("--demo", env=env) as relay:
        client = openai.OpenAI(base_url=f"{relay.url}/v1", api_key=DEMO_API_KEY, max_retries=0)
        stream = client.chat.completions.create(model="gptomni", messages=[{"role": "user", "content": "x"}], stream=True)
        first = next(iter(stream))
        threading.Timer(0.2, relay.process.send_signal, args=(signal.SIGTERM,)).start()
        rest = list(stream)
        text = (first.choices[0].delta.content or "") + "".join(c.choices[0].delta.content or "" for c in rest)
        assert text.endswith("simulated.") and len(text.split()) == 20  # the whole answer
        assert rest[-1].choices[0].finish_reason == "stop"
        relay.process.wait(20)
        client.close()
