"""Metrics and traces of a relay that served streamed, failed and failed-over requests."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from gptomni_relay.edge.server import serve_app
from gptomni_relay.settings import DEMO_API_KEY
from gptomni_relay.simulator import Behaviour, SimulatorState, build_simulator_app
from tests.harness import BackgroundLoop, Harness, write_pool_file
from tests.polling import wait_until
from tests.processes import relay_process
from tests.system_parts import REPO

HELLO = [{"role": "user", "content": "Hello"}]


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


def value(scraped: dict, name: str, **labels: str) -> float:
    return scraped.get((name, tuple(sorted(labels.items()))), 0.0)


@pytest.fixture
def busy_relay(make_relay: Any) -> Harness:
    """alpha is rejected (401), beta cuts every answer after two pieces, gamma is fine."""
    sim = SimulatorState(accepted={"session=beta", "session=gamma"})
    sim.set("session=beta", cut_after=2, token_delay=0.01)
    relay = make_relay(sim=sim, cookies=["session=alpha", "session=beta", "session=gamma"])
    return relay


def test_scrape_counts_streams_failures_and_failovers(busy_relay: Harness) -> None:
    relay = busy_relay
    http = relay.http()
    streams = []
    for _ in range(6):
        with http.stream("POST", "/v1/chat/completions",
                         json={"model": "gptomni", "messages": HELLO, "stream": True}) as response:
            assert response.status_code == 200  # a break after the start ends the stream with an error event
            streams.append(list(response.iter_lines()))
    http.post("/v1/chat/completions", content=b"nope")
    scraped = samples(relay.metrics_text())

    finished = sum(1 for lines in streams if "data: [DONE]" in lines)
    broken = sum(1 for lines in streams if any(line.startswith('data: {"error"') for line in lines))
    attempts = {o: value(scraped, "gptomni_upstream_attempts_total", credential=c, outcome=o)
                for c, o in [("env/0", "unauthorized"), ("env/1", "error"), ("env/2", "ok")]}
    assert attempts["unauthorized"] == 1  # alpha ejected on first use
    assert value(scraped, "gptomni_failovers_total") == 1
    cut = attempts["error"]
    assert cut >= 1 and attempts["ok"] == 6 - cut
    assert value(scraped, "gptomni_stream_interruptions_total", outcome="error") == cut
    assert value(scraped, "gptomni_requests_total", model="gptomni", status="200", stream="true") == 6 - cut
    assert value(scraped, "gptomni_requests_total", model="gptomni", status="502", stream="true") == cut
    assert value(scraped, "gptomni_time_to_first_token_seconds_count", model="gptomni") == 6
    assert value(scraped, "gptomni_request_duration_seconds_count", stream="true") == 6
    assert value(scraped, "gptomni_active_streams") == 0
    assert value(scraped, "gptomni_credential_state", credential="env/0", state="ejected") == 1
    assert value(scraped, "gptomni_credential_state", credential="env/2", state="healthy") == 1
    assert value(scraped, "gptomni_credential_in_flight", credential="env/2") == 0
    assert value(scraped, "gptomni_completion_tokens_total", model="gptomni") > 0
    assert (finished, broken) == (6 - cut, cut)
    assert value(scraped, "gptomni_requests_total", model="unknown", status="400", stream="false") == 1


def test_series_a_dashboard_reads_exist_at_zero_before_any_request(make_relay: Any) -> None:
    """rate() cannot see a series' first event, and an absent series is "No data"."""
    relay = make_relay(cookies=[], models=["gptomni", "gptomni-pro"], api_keys=["team-a:sk-team-a-0123456789"])
    scraped = samples(relay.metrics_text())
    expected = [
        *(("gptomni_requests_total", {"model": model, "status": status, "stream": stream})
          for model in ("gptomni", "gptomni-pro") for stream in ("true", "false")
          for status in ("200", "429", "499", "502", "503", "504")),
        *(("gptomni_requests_total", {"model": "unknown", "status": status, "stream": "false"})
          for status in ("400", "401", "404", "413")),
        *(("gptomni_api_key_requests_total", {"api_key": "team-a", "status_class": c}) for c in ("2xx", "4xx", "5xx")),
        *(("gptomni_pool_reloads_total", {"result": result}) for result in ("ok", "invalid", "missing")),
        ("gptomni_stream_interruptions_total", {"outcome": "error"}),
        ("gptomni_time_to_first_token_seconds_count", {"model": "gptomni-pro"}),
        ("gptomni_request_duration_seconds_count", {"stream": "false"}),
        ("gptomni_upstream_time_to_first_token_seconds_count", {}),
        ("gptomni_credential_wait_seconds_count", {}),
        ("gptomni_failovers_total", {}),
    ]
    for name, labels in expected:
        assert scraped.get((name, tuple(sorted(labels.items())))) == 0, (name, labels)
    # An empty pool is 0 healthy credentials, not no series: the alert on it can fire.
    for state in ("healthy", "cooling", "ejected"):
        assert scraped[("gptomni_credentials", (("state", state),))] == 0


def test_requests_are_counted_by_api_key_name_never_the_key(make_relay: Any) -> None:
    keys = ["team-a:sk-team-a-0123456789", "team-a:sk-team-a-rotated-42", "sk-bare-key-0123456789",
            "old:style-key-with-a-colon"]
    relay = make_relay(api_keys=keys)

    def ask(key: str, **body: Any) -> int:
        return httpx.post(f"{relay.url}/v1/chat/completions", headers={"Authorization": f"Bearer {key}"},
                          json={"model": "gptomni", "messages": HELLO, **body}).status_code

    # Both keys of a name count under it; an entry that predates names works whole too.
    presented = ["sk-team-a-0123456789", "sk-team-a-rotated-42", "sk-bare-key-0123456789",
                 "old:style-key-with-a-colon", "style-key-with-a-colon"]
    assert [ask(key) for key in presented] == [200] * 5
    assert ask("sk-team-a-0123456789", model="nope") == 404
    assert ask("sk-never-configured") == 401
    assert ask("team-a") == 401  # a name is not a key
    text = relay.metrics_text()
    scraped = samples(text)
    by_key = {labels: count for (name, labels), count in scraped.items() if name == "gptomni_api_key_requests_total"}
    assert by_key == {
        (("api_key", "team-a"), ("status_class", "2xx")): 2, (("api_key", "team-a"), ("status_class", "4xx")): 1,
        (("api_key", "team-a"), ("status_class", "5xx")): 0,
        (("api_key", "unnamed"), ("status_class", "2xx")): 1, (("api_key", "unnamed"), ("status_class", "4xx")): 0,
        (("api_key", "unnamed"), ("status_class", "5xx")): 0,
        (("api_key", "old"), ("status_class", "2xx")): 2, (("api_key", "old"), ("status_class", "4xx")): 0,
        (("api_key", "old"), ("status_class", "5xx")): 0,
    }
    assert value(scraped, "gptomni_requests_total", model="unknown", status="401", stream="false") == 2
    for key in presented:
        assert key not in text


def test_series_of_removed_credentials_and_key_names_are_dropped(make_relay: Any, tmp_path: Path) -> None:
    keys = tmp_path / "api-keys"
    keys.write_text("team-a:sk-team-a-0123456789\nteam-b:sk-team-b-0123456789\n")
    write_pool_file(tmp_path / "pool", [{"id": "default/a", "cookie": "session=a"},
                                        {"id": "default/b", "cookie": "session=b"}])
    relay = make_relay(cookies=[], credentials_file=tmp_path / "pool" / "credentials.json", api_keys=[],
                       api_keys_file=keys, credentials_poll_seconds=0.1)

    def labelled(name: str, label: str) -> set[str]:
        return {dict(labels)[label] for (sample, labels), _ in samples(relay.metrics_text()).items() if sample == name}

    assert labelled("gptomni_upstream_attempts_total", "credential") == {"default/a", "default/b"}
    assert labelled("gptomni_api_key_requests_total", "api_key") == {"team-a", "team-b"}
    write_pool_file(tmp_path / "pool", [{"id": "default/b", "cookie": "session=b"}])
    replacement = tmp_path / "api-keys.new"
    replacement.write_text("team-b:sk-team-b-0123456789\n")
    os.replace(replacement, keys)
    wait_until(lambda: labelled("gptomni_api_key_requests_total", "api_key") == {"team-b"}
               and labelled("gptomni_credential_state", "credential") == {"default/b"}, what="both files reloaded")
    for name in ("gptomni_upstream_attempts_total", "gptomni_credential_state", "gptomni_credential_in_flight"):
        assert labelled(name, "credential") == {"default/b"}, name
    assert labelled("gptomni_api_key_requests_total", "api_key") == {"team-b"}


async def test_slot_waits_and_upstream_time_to_first_token(make_relay: Any) -> None:
    """One slot, two requests: the second waits for the first; GPT-Omni's 0.3 s to the first
    text is measured per attempt, apart from the relay's own time to first token."""
    sim = SimulatorState(default=Behaviour(first_byte_delay=0.3))
    relay = make_relay(sim=sim, default_max_concurrency=1)
    async with relay.async_client() as client:
        await asyncio.gather(*(client.chat.completions.create(model="gptomni", messages=HELLO) for _ in range(2)))
    scraped = samples(relay.metrics_text())
    assert value(scraped, "gptomni_upstream_time_to_first_token_seconds_count") == 2
    assert value(scraped, "gptomni_upstream_time_to_first_token_seconds_bucket", le="0.25") == 0
    assert value(scraped, "gptomni_credential_wait_seconds_count") == 2
    # The first got the slot at once, the second waited for the first's 0.3 s and more.
    assert value(scraped, "gptomni_credential_wait_seconds_bucket", le="0.25") == 1
    # The client's time to first token includes the wait; GPT-Omni's does not.
    relay_ttft = value(scraped, "gptomni_time_to_first_token_seconds_sum", model="gptomni")
    assert relay_ttft >= value(scraped, "gptomni_upstream_time_to_first_token_seconds_sum") + 0.25


def test_json_logs_carry_the_trace_id() -> None:
    trace_id = "0af7651916cd43dd8448eb211c80319c"
    with relay_process("--demo", env={"GPTOMNI_DEMO_TOKEN_DELAY_SECONDS": "0"}) as relay:
        response = httpx.post(
            f"{relay.url}/v1/chat/completions",
            json={"model": "gptomni", "messages": HELLO},
            headers={"Authorization": f"Bearer {DEMO_API_KEY}", "traceparent": f"00-{trace_id}-b7ad6b7169203331-01"},
        )
        assert response.status_code == 200
        lines = [json.loads(line) for line in relay.output().splitlines() if line.startswith("{")]
    finished = [line for line in lines if line.get("message") == "chat completion finished"]
    assert finished and finished[0]["trace_id"] == trace_id
    assert finished[0]["level"] == "INFO" and finished[0]["status"] == "200"


@contextmanager
def otlp_receiver(workdir: Path) -> Iterator[tuple[str, Path]]:
    """The collector stand-in (tests/otlp_receiver.py) as a process: its URL and its spans file."""
    port_file, spans_file = workdir / "otlp.port", workdir / "spans.jsonl"
    receiver = subprocess.Popen([sys.executable, "-m", "tests.otlp_receiver", str(port_file), str(spans_file)],
                                cwd=REPO)
    try:
        def listening() -> bool:
            assert receiver.poll() is None, "the OTLP receiver exited"
            return port_file.exists()

        wait_until(listening, what="the OTLP receiver listening")
        yield f"http://127.0.0.1:{port_file.read_text()}", spans_file
    finally:
        receiver.terminate()
        receiver.wait(10)


def exported_spans(spans_file: Path, trace_ids: set[str], timeout: float = 10) -> list[dict[str, Any]]:
    """The received spans of these traces, once each has its server span (bounded wait)."""
    def complete() -> list[dict[str, Any]] | None:
        lines = spans_file.read_text().splitlines() if spans_file.exists() else []
        spans = [span for span in map(json.loads, lines) if span["trace_id"] in trace_ids]
        return spans if {s["trace_id"] for s in spans if s["kind"] == "SERVER"} == trace_ids else None

    return wait_until(complete, timeout, what="a server span of each trace")


def test_spans_reach_a_collector_over_otlp_as_one_tree_without_secrets(tmp_path: Path, servers: BackgroundLoop) -> None:
    """Tracing is on only with an exporter (spans cost ~1 ms a request). A relay process
    exports over OTLP/HTTP to a collector process; as a backend sees them: a failover is one
    server span under the caller's span with one child per attempt, the rejected attempt in
    error; a refused request is a server span alone; no cookie or key in any attribute."""
    cookies = ["session=alpha-SECRET-a1b2c3", "session=gamma-SECRET-d4e5f6"]
    key, wrong_key = "sk-otel-team-a-0123456789", "sk-otel-wrong-9876543210"
    sim = SimulatorState(accepted={cookies[1]})
    sim_url = servers.enter(serve_app(build_simulator_app(sim))).url
    traces = {"failover": "5b8efff798038103d269b633813fc60c", "unknown model": "0af7651916cd43dd8448eb211c80319c",
              "wrong key": "4bf92f3577b34da6a3ce929d0e0e4736"}
    caller_span = "b7ad6b7169203331"
    with otlp_receiver(tmp_path) as (endpoint, spans_file):
        env = {"GPTOMNI_UPSTREAM_URL": sim_url, "GPTOMNI_CREDENTIALS": json.dumps(cookies),
               "GPTOMNI_API_KEYS": f"team-a:{key}", "GPTOMNI_EJECT_PROBE_SECONDS": "0",
               "OTEL_SERVICE_NAME": "relay-under-test", "OTEL_EXPORTER_OTLP_ENDPOINT": endpoint,
               "OTEL_BSP_SCHEDULE_DELAY": "100"}
        with relay_process(env=env) as relay:
            def chat(trace: str, bearer: str, model: str = "gptomni") -> int:
                return httpx.post(
                    f"{relay.url}/v1/chat/completions", json={"model": model, "messages": HELLO, "stream": True},
                    headers={"Authorization": f"Bearer {bearer}", "traceparent": f"00-{traces[trace]}-{caller_span}-01"},
                ).status_code

            assert chat("failover", key) == 200  # the first pick is env/0, whose cookie is rejected
            assert chat("unknown model", key, model="nope") == 404
            assert chat("wrong key", wrong_key) == 401
            spans = exported_spans(spans_file, set(traces.values()))

    def of(trace: str) -> list[dict[str, Any]]:
        return [span for span in spans if span["trace_id"] == traces[trace]]

    [server] = [span for span in of("failover") if span["kind"] == "SERVER"]
    attempts = sorted((s for s in of("failover") if s["name"] == "gptomni.upstream"),
                      key=lambda s: s["attributes"]["gptomni.attempt"])
    assert server["name"] == "POST /v1/chat/completions" and server["parent_span_id"] == caller_span
    assert server["service"] == "relay-under-test" and server["attributes"]["http.status_code"] == 200
    assert [(a["kind"], a["parent_span_id"]) for a in attempts] == [("INTERNAL", server["span_id"])] * 2
    first, second = attempts
    assert first["attributes"] == {"gptomni.credential_id": "env/0", "gptomni.attempt": 1,
                                   "gptomni.outcome": "unauthorized"}
    assert first["status"]["code"] == "ERROR" and first["status"]["message"]
    assert second["attributes"]["gptomni.credential_id"] == "env/1"
    assert second["attributes"]["gptomni.outcome"] == "ok" and second["attributes"]["gptomni.ttft_ms"] >= 0
    assert second["status"]["code"] == "UNSET"
    # One after the other, inside the request.
    assert server["start_ns"] <= first["start_ns"] <= first["end_ns"] <= second["start_ns"] <= server["end_ns"]
    for trace, status in (("unknown model", 404), ("wrong key", 401)):
        [refused] = [span for span in of(trace) if span["kind"] == "SERVER"]
        assert refused["attributes"]["http.status_code"] == status and refused["parent_span_id"] == caller_span
        assert not [span for span in of(trace) if span["name"] == "gptomni.upstream"]
    exported = json.dumps(spans)
    for secret in [*cookies, key, wrong_key, "Bearer"]:
        assert secret not in exported
