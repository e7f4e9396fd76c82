"""The relay process as a user starts it: README's demo command, secure defaults, draining."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import openai
import pytest

from gptomni_relay.edge.server import serve_app
from gptomni_relay.settings import DEMO_API_KEY
from gptomni_relay.simulator import Behaviour, SimulatorState, build_simulator_app
from tests.harness import BackgroundLoop
from tests.polling import wait_until
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
    # The embedded simulator is uvicorn too; only the relay's own start-up is told.
    assert output.count("Started server process") == 1
    listening = [line for line in log_lines if line["message"] == "relay listening"]
    assert len(listening) == 1 and listening[0]["url"] == f"{relay.url}/v1" and listening[0]["demo"] is True


def test_real_mode_says_where_it_listens_and_text_logs_keep_the_fields() -> None:
    env = {"GPTOMNI_API_KEYS": "sk-cli-test", "GPTOMNI_CREDENTIALS": '["session=x"]', "GPTOMNI_LOG_FORMAT": "text",
           "GPTOMNI_UPSTREAM_URL": "http://127.0.0.1:9"}  # nothing listens there: the answer is a 502
    with relay_process(env=env) as relay:
        response = httpx.post(f"{relay.url}/v1/chat/completions", headers={"Authorization": "Bearer sk-cli-test"},
                              json={"model": "gptomni", "messages": [{"role": "user", "content": "x"}]}, timeout=30)
        assert response.status_code == 502
        output = wait_until(lambda: "chat completion finished" in relay.output() and relay.output(),
                            what="the request's log line")
    assert f"relay listening url=http://0.0.0.0:{relay.port}/v1" in output
    finished = next(line for line in output.splitlines() if "chat completion finished" in line)
    assert "status=502" in finished and "model=gptomni" in finished and "code=upstream_error" in finished
    assert "upstream attempt failed" in output and "credential=env/0" in output


def test_the_demo_never_prints_a_users_own_key_and_stays_local() -> None:
    env = {"GPTOMNI_API_KEYS": "sk-my-own-secret-key", "GPTOMNI_DEMO": "true"}
    with relay_process(env=env) as relay:
        output = relay.output()
    assert "sk-my-own-secret-key" not in output and "(from GPTOMNI_API_KEYS)" in output
    listening = next(json.loads(line) for line in output.splitlines() if '"relay listening"' in line)
    assert listening["url"].startswith("http://127.0.0.1:")


@pytest.mark.parametrize(("variable", "value"), [("GPTOMNI_LOG_LEVEL", "LOUD"), ("GPTOMNI_UPSTREAM_URL", "gptomni.ai")])
def test_a_bad_setting_is_a_configuration_error(variable: str, value: str) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GPTOMNI_")}
    env.update({"GPTOMNI_API_KEYS": "sk-x", variable: value})
    result = subprocess.run([sys.executable, "-m", "gptomni_relay"], env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and "configuration error" in result.stderr and "Traceback" not in result.stderr


def test_a_busy_port_is_one_clear_line_and_exit_2() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        env = {k: v for k, v in os.environ.items() if not k.startswith("GPTOMNI_")}
        result = subprocess.run([sys.executable, "-m", "gptomni_relay", "--demo", "--port", str(port)],
                                env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1] == f"gptomni-relay: cannot listen on 127.0.0.1:{port}: Address already in use"
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("credentials", [
    '["session=SECRET-COOKIE\\r\\nX-Injected: 1"]',  # valid JSON; a cookie no header may carry
    '["session=SECRET-COOKIE", 7]',  # not a list of strings
    '["session=SECRET-COOKIE\r\n',  # not JSON at all
])
def test_a_malformed_credentials_variable_never_prints_the_cookie(credentials: str) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GPTOMNI_")}
    env.update({"GPTOMNI_API_KEYS": "sk-x", "GPTOMNI_CREDENTIALS": credentials})
    result = subprocess.run([sys.executable, "-m", "gptomni_relay"], env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and "configuration error" in result.stderr and "credentials" in result.stderr
    assert "SECRET" not in result.stderr + result.stdout and "Traceback" not in result.stderr


@pytest.mark.parametrize("program", ["gptomni_relay", "gptomni_operator"])
def test_help_lists_every_setting_and_version_prints_it(program: str) -> None:
    from importlib import metadata

    from gptomni_operator.settings import OperatorSettings
    from gptomni_relay.settings import RelaySettings

    model = RelaySettings if program == "gptomni_relay" else OperatorSettings
    prefix = model.model_config["env_prefix"]
    shown = subprocess.run([sys.executable, "-m", program, "--help"], capture_output=True, text=True, timeout=60)
    assert shown.returncode == 0
    assert all(f"{prefix}{name.upper()}" in shown.stdout for name in model.model_fields)
    assert "GPTOMNI_UPSTREAM_URL" in shown.stdout  # the operator's shared alias too
    version = subprocess.run([sys.executable, "-m", program, "--version"], capture_output=True, text=True, timeout=60)
    assert version.returncode == 0 and version.stdout.split()[-1] == metadata.version("gptomni")


def test_the_operator_without_credentials_fails_fast_with_one_line(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("GPTOMNI_", "KUBECONFIG"))}
    env["HOME"] = str(tmp_path)  # no ~/.kube/config
    started = time.monotonic()
    result = subprocess.run([sys.executable, "-m", "gptomni_operator"], env=env, capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 2 and time.monotonic() - started < 30
    [line] = result.stderr.strip().splitlines()
    assert line.startswith("gptomni-operator: no Kubernetes credentials") and "~/.kube/config" in line


def test_refuses_to_start_without_an_api_key() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GPTOMNI_")}
    result = subprocess.run([sys.executable, "-m", "gptomni_relay"], env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert "no API key configured" in result.stderr


def test_200_concurrent_streams_through_one_process(servers: BackgroundLoop) -> None:
    """≥200 streams are all open at once in one relay process: GPT-Omni holds every answer
    after its first piece until all of them are open there and each client has its first
    piece. Serialised handling (a blocking call, a small thread pool) never gets there.
    Nothing is timed: only the bound on the whole run, which a working relay is far from."""
    hold = asyncio.Event()
    sim = SimulatorState(default=Behaviour(answer_words=10, hold=hold))
    upstream = servers.enter(serve_app(build_simulator_app(sim), quiet=True))
    env = {"GPTOMNI_UPSTREAM_URL": upstream.url, "GPTOMNI_API_KEYS": "sk-cli-streams",
           "GPTOMNI_CREDENTIALS": '["session=streams"]', "GPTOMNI_DEFAULT_MAX_CONCURRENCY": str(2 * STREAMS)}
    with relay_process(env=env) as relay:

        async def run_streams() -> list[str]:
            # The SDK's aiohttp transport: httpx's pool would make the *client* the bottleneck.
            async with openai.AsyncOpenAI(base_url=f"{relay.url}/v1", api_key="sk-cli-streams", max_retries=0,
                                          http_client=openai.DefaultAioHttpClient(timeout=60)) as client:
                first_pieces = 0
                all_started = asyncio.Event()

                async def one() -> str:
                    nonlocal first_pieces
                    stream = await client.chat.completions.create(
                        model="gptomni", messages=[{"role": "user", "content": "go"}], stream=True
                    )
                    pieces: list[str] = []
                    async for chunk in stream:
                        if chunk.choices and chunk.choices[0].delta.content:
                            if not pieces:
                                first_pieces += 1
                                if first_pieces == STREAMS:
                                    all_started.set()
                            pieces.append(chunk.choices[0].delta.content)
                    return "".join(pieces)

                async def release_when_all_open() -> None:
                    await all_started.wait()
                    assert sim.active == STREAMS and sim.completed == 0  # all open at GPT-Omni too
                    servers.loop.call_soon_threadsafe(hold.set)

                async with asyncio.timeout(120):
                    *answers, _ = await asyncio.gather(*(one() for _ in range(STREAMS)), release_when_all_open())
                return answers

        answers = asyncio.run(run_streams())
    assert len(answers) == STREAMS and set(answers) == {answers[0]} and answers[0].endswith("answer back.")
    assert sim.completed == STREAMS


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
