"""The Codex CLI (npm @openai/codex), a coding agent that speaks only the Responses API,
run offline against a loopback relay: `codex exec` with a model provider of
`wire_api = "responses"`. It sends its own instructions, several input messages, its
function tools plus built-in ones (web_search, a namespace), `tool_choice: auto`,
`reasoning`, `include`, `store: false` and `prompt_cache_key`, streamed: it must get a
real answer, and a tool call it runs must come back as a tool result."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

from gptomni_relay.simulator import SimulatorState
from tests import real_clients
from tests.harness import Harness

CONFIG = """model = "gptomni"
model_provider = "gptomni"
[model_providers.gptomni]
name = "gptomni relay"
base_url = "{url}/v1"
env_key = "GPTOMNI_TEST_KEY"
wire_api = "responses"
request_max_retries = 0
stream_max_retries = 0
"""


def run_codex(relay: Harness, home: Path, workdir: Path, prompt: str) -> tuple[subprocess.CompletedProcess[str], str]:
    home.mkdir()
    (home / "config.toml").write_text(CONFIG.format(url=relay.url))
    last = workdir / "last-message.txt"
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(home), "CODEX_HOME": str(home),
           "GPTOMNI_TEST_KEY": relay.api_key, "NO_COLOR": "1"}
    done = subprocess.run(
        [str(real_clients.codex()), "exec", "--skip-git-repo-check", "--sandbox", "read-only",
         "--output-last-message", str(last), prompt],
        cwd=workdir, env=env, capture_output=True, text=True, timeout=90, stdin=subprocess.DEVNULL)
    return done, last.read_text() if last.exists() else ""


def test_codex_exec_gets_a_real_answer(make_relay, tmp_path: Path) -> None:  # noqa: ANN001
    relay: Harness = make_relay(sim=SimulatorState())
    done, last = run_codex(relay, tmp_path / "home", tmp_path, "Say hello [[simulate: Hello from the relay! ]]")
    assert done.returncode == 0, done.stderr[-3000:]
    assert last.strip() == "Hello from the relay!"
    prompt = relay.sim.received[-1].prompt
    assert "exec_command" in prompt  # its function tools were described to the model
    assert "web_search" not in prompt.split("You can call these tools")[-1]


def test_codex_runs_a_tool_call_and_sends_its_result_back(make_relay, tmp_path: Path) -> None:  # noqa: ANN001
    relay: Harness = make_relay(sim=SimulatorState())
    call = json.dumps({"name": "exec_command", "arguments": {"cmd": "echo codex-ran-this"}})
    cue = f"[[simulate: <tool_call>{call}</tool_call> ||| The command said: {{{{tool_result}}}} ]]"
    done, last = run_codex(relay, tmp_path / "home", tmp_path, f"Run the echo command. {cue}")
    assert done.returncode == 0, done.stderr[-3000:]
    prompts = [received.prompt for received in relay.sim.received]
    assert len(prompts) >= 2
    assert "Tool result (exec_command" in prompts[-1]
    assert last.startswith("The command said:")
    assert "codex-ran-this" in prompts[-1]
