"""The official Node SDK (npm `openai`, scripts/provision/60-npm-clients.sh) against a
real relay: chat and Responses streams assembled by the SDK itself, and function tools on
both surfaces, the chat stream helper and `runTools`, and the SDK's typed errors
(tests/node/sdk_client.cjs)."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

from tests import real_clients
from tests.harness import Harness

SCRIPT = Path(__file__).parent / "node" / "sdk_client.cjs"
EXPECTED = "Hello from the GPT-Omni simulator! You said: Hello relay"
CALL = '<tool_call>{"name": "get_weather", "arguments": {"city": "Paris"}}</tool_call>'


def test_the_node_sdk_streams_and_calls_tools_on_both_surfaces(relay: Harness) -> None:
    cue = f"[[simulate: {CALL} ||| It is {{{{tool_result}}}} in Paris. ||| {CALL} ]]"
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "NODE_MODULES": str(real_clients.node_modules()),
           "BASE_URL": f"{relay.url}/v1", "API_KEY": relay.api_key, "CUE": cue}
    done = subprocess.run([real_clients.node(), str(SCRIPT)], env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr[-3000:]
    seen = json.loads(done.stdout)

    assert seen["chat_stream"] == {"text": EXPECTED, "finish_reason": "stop"}
    stream = seen["responses_stream"]
    assert stream["deltas"] == stream["output_text"] == EXPECTED and stream["status"] == "completed"
    assert stream["types"][:4] == ["response.created", "response.in_progress", "response.output_item.added",
                                   "response.content_part.added"]
    assert stream["types"][-1] == "response.completed"
    assert seen["responses_tools"] == {"name": "get_weather", "arguments": {"city": "Paris"},
                                       "answer": "It is 21 C in Paris."}
    [call] = seen["chat_tools"]["calls"]
    assert (call["name"], call["arguments"], seen["chat_tools"]["finish_reason"]) == (
        "get_weather", {"city": "Paris"}, "tool_calls")
    assert call["id"].startswith("call_")
    helper = seen["chat_stream_helper"]
    assert helper == {"done": [["get_weather", {"city": "Paris"}]], "finish_reason": "tool_calls", "usage": True}
    # runTools called the tool and sent its result back: user, call, result, answer.
    for stream in ("false", "true"):
        assert seen["run_tools"][stream] == {"answer": f"{stream}: 21 C in Paris.", "messages": 4}, stream
    errors = seen["errors"]
    expected = {"bad_request": ("BadRequestError", 400, "n", None),
                "image": ("BadRequestError", 400, "messages[0].content[1]", "unsupported_content"),
                "not_found": ("NotFoundError", 404, "model", "model_not_found"),
                "authentication": ("AuthenticationError", 401, None, "invalid_api_key")}
    for name, (kind, status, param, code) in expected.items():
        error = errors[name]
        assert (error["class"], error["status"], error["param"], error["code"]) == (kind, status, param, code), name
        assert error["request_id"].startswith("req_"), name
