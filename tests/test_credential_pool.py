"""The credential pool through the running relay: hot reload, ejection, cooldown, failover."""

from __future__ import annotations

import asyncio
import logging
import os
import threading
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from gptomni_relay.core.errors import AllBusy
from gptomni_relay.core.pool import Credential
from gptomni_relay.settings import RelaySettings
from gptomni_relay.simulator import Behaviour, SimulatorState
from gptomni_relay.state import build_pool
from tests.harness import Harness, sample_value, write_pool_file, write_raw_pool_file
from tests.polling import FakeClock, wait_until

HELLO = [{"role": "user", "content": "Hello"}]


def entry(name: str, cookie: str, **extra: Any) -> dict[str, Any]:
    return {"id": f"default/{name}", "cookie": cookie, "weight": 1, "maxConcurrency": 8, **extra}


def sessions_used(sim: SimulatorState) -> Counter[str]:
    return Counter(chat.session for chat in sim.received)


def file_relay(make_relay: Any, pool_dir: Path, entries: list[dict[str, Any]], **kwargs: Any) -> Harness:
    write_pool_file(pool_dir, entries)
    return make_relay(cookies=[], credentials_file=pool_dir / "credentials.json",
                      credentials_poll_seconds=0.1, **kwargs)


def ids(relay: Harness) -> dict[str, str]:
    return {s.id: s.health.value for s in relay.state.pool.statuses()}


def test_reload_by_atomic_symlink_swap_keeps_open_streams(make_relay: Any, tmp_path: Path) -> None:
    sim = SimulatorState(default=Behaviour(token_delay=0.1, answer_words=15))
    relay = file_relay(make_relay, tmp_path, [entry("a", "session=alpha")], sim=sim)
    client = relay.client()
    stream = client.chat.completions.create(model="gptomni", messages=HELLO, stream=True)
    first = next(iter(stream))  # a stream is open on alpha

    write_pool_file(tmp_path, [entry("b", "session=beta")])
    wait_until(lambda: ids(relay) == {"default/b": "healthy"})

    rest = "".join(c.choices[0].delta.content or "" for c in stream)
    assert len(((first.choices[0].delta.content or "") + rest).split()) == 15  # the old stream finished whole
    client.chat.completions.create(model="gptomni", messages=HELLO)
    assert sessions_used(sim) == Counter({"session=alpha": 1, "session=beta": 1})
    assert relay.state.pool.total_in_flight() == 0
    assert 'gptomni_pool_reloads_total{result="ok"} 2.0' in relay.metrics_text()


def test_malformed_or_empty_file_keeps_last_good_pool(make_relay: Any, tmp_path: Path,
                                                      caplog: pytest.LogCaptureFixture) -> None:
    relay = file_relay(make_relay, tmp_path, [entry("a", "session=alpha")])
    caplog.set_level(logging.ERROR, logger="gptomni_relay.file_watch")
    write_raw_pool_file(tmp_path, b'{"version": 1, "credentials": [{"id": "x"}]}')
    wait_until(lambda: 'result="invalid"} 1.0' in relay.metrics_text())
    write_raw_pool_file(tmp_path, b"")
    wait_until(lambda: 'result="invalid"} 2.0' in relay.metrics_text())

    async def poll_again() -> None:
        for _ in range(5):
            relay.state.watchers[0].check_now()

    relay.on_loop(poll_again())  # several more polls of the same bad file

    assert ids(relay) == {"default/a": "healthy"}
    assert relay.client().chat.completions.create(model="gptomni", messages=HELLO).choices[0].message.content
    rejected = [r for r in caplog.records if "rejected" in r.getMessage()]
    assert len(rejected) == 2  # once per bad version, not once per poll
    assert "credentials.0.cookie" in rejected[0].reason


def test_a_valid_empty_pool_is_applied(make_relay: Any, tmp_path: Path) -> None:
    relay = file_relay(make_relay, tmp_path, [entry("a", "session=alpha")])
    write_pool_file(tmp_path, [])
    wait_until(lambda: ids(relay) == {})
    assert relay.http().get("/readyz").status_code == 503
    with pytest.raises(openai.InternalServerError):
        relay.client().chat.completions.create(model="gptomni", messages=HELLO)


def test_rejected_cookie_is_ejected_and_requests_fail_over(make_relay: Any, tmp_path: Path) -> None:
    sim = SimulatorState(accepted={"session=beta"})
    relay = file_relay(make_relay, tmp_path, [entry("a", "session=alpha"), entry("b", "session=beta")], sim=sim)
    client = relay.client()
    for _ in range(6):
        assert client.chat.completions.create(model="gptomni", messages=HELLO).choices[0].message.content
    assert ids(relay) == {"default/a": "ejected", "default/b": "healthy"}
    assert sessions_used(sim)["session=alpha"] == 1  # asked once, then never again
    metrics = relay.metrics_text()
    assert 'gptomni_upstream_attempts_total{credential="default/a",outcome="unauthorized"} 1.0' in metrics
    assert 'gptomni_credential_state{credential="default/a",state="ejected"} 1.0' in metrics
    assert "gptomni_failovers_total 1.0" in metrics

    # The same cookie again keeps the ejection; a new cookie for the id lifts it.
    write_pool_file(tmp_path, [entry("a", "session=alpha"), entry("b", "session=beta"), entry("c", "session=beta")])
    wait_until(lambda: "default/c" in ids(relay))
    assert ids(relay)["default/a"] == "ejected"
    write_pool_file(tmp_path, [entry("a", "session=beta"), entry("b", "session=beta")])
    wait_until(lambda: ids(relay) == {"default/a": "healthy", "default/b": "healthy"})


def test_every_credential_ejected_is_503_and_not_ready(make_relay: Any) -> None:
    relay = make_relay(sim=SimulatorState(accepted=set()), cookies=["session=a", "session=b"])
    response = relay.http().post("/v1/chat/completions", json={"model": "gptomni", "messages": HELLO})
    assert response.status_code == 503 and response.json()["error"]["code"] == "no_credentials"
    assert relay.http().get("/readyz").status_code == 503


def test_rate_limited_cookie_cools_down_then_returns(make_relay: Any) -> None:
    sim = SimulatorState()
    sim.set("session=alpha", status=429, retry_after=1)
    clock = FakeClock()
    relay = make_relay(sim=sim, cookies=["session=alpha", "session=beta"], clock=clock)
    client = relay.client()
    for _ in range(4):
        client.chat.completions.create(model="gptomni", messages=HELLO)
    assert sessions_used(sim)["session=alpha"] == 1
    assert ids(relay)["env/0"] == "cooling"
    sim.behaviours.clear()
    clock.advance(0.9)
    assert ids(relay)["env/0"] == "cooling"
    clock.advance(0.2)
    assert ids(relay)["env/0"] == "healthy"
    for _ in range(4):
        client.chat.completions.create(model="gptomni", messages=HELLO)
    assert sessions_used(sim)["session=alpha"] >= 2


def test_backoff_grows_without_retry_after(make_relay: Any) -> None:
    sim = SimulatorState(default=Behaviour(status=429))
    clock = FakeClock()
    relay = make_relay(sim=sim, cookies=["session=alpha"], cooldown_base_seconds=1, clock=clock)
    http = relay.http()
    first = http.post("/v1/chat/completions", json={"model": "gptomni", "messages": HELLO})
    assert first.status_code == 429 and first.headers["retry-after"] == "1"
    clock.advance(1.1)
    second = http.post("/v1/chat/completions", json={"model": "gptomni", "messages": HELLO})
    assert second.status_code == 429 and second.headers["retry-after"] == "2"


def test_cooldown_survives_a_reload_for_the_same_id(make_relay: Any, tmp_path: Path) -> None:
    sim = SimulatorState(default=Behaviour(status=429, retry_after=30))
    relay = file_relay(make_relay, tmp_path, [entry("a", "session=alpha")], sim=sim)
    assert relay.http().post("/v1/chat/completions", json={"model": "gptomni", "messages": HELLO}).status_code == 429
    write_pool_file(tmp_path, [entry("a", "session=alpha", weight=2), entry("b", "session=beta")])
    wait_until(lambda: "default/b" in ids(relay))
    assert ids(relay)["default/a"] == "cooling"


def test_failure_before_first_byte_fails_over(make_relay: Any) -> None:
    sim = SimulatorState()
    sim.set("session=alpha", cut_after=0)  # headers, then the connection drops
    sim.set("session=beta", status=502)
    relay = make_relay(sim=sim, cookies=["session=alpha", "session=beta", "session=gamma"])
    for _ in range(3):
        chunks = list(relay.client().chat.completions.create(model="gptomni", messages=HELLO, stream=True))
        assert "".join(c.choices[0].delta.content or "" for c in chunks).endswith("You said: Hello")
    assert sessions_used(sim)["session=gamma"] == 3


def test_failover_attempts_are_bounded(make_relay: Any) -> None:
    sim = SimulatorState(default=Behaviour(status=500))
    relay = make_relay(sim=sim, cookies=[f"session={i}" for i in range(6)], max_attempts=3)
    response = relay.http().post("/v1/chat/completions", json={"model": "gptomni", "messages": HELLO})
    assert response.status_code == 502
    assert len(sim.received) == 3


def test_max_concurrency_is_honoured(make_relay: Any) -> None:
    sim = SimulatorState(default=Behaviour(token_delay=0.2, answer_words=5))
    relay = make_relay(sim=sim, cookies=["session=alpha"], default_max_concurrency=2, acquire_timeout_seconds=0.2)
    results: list[int] = []

    def call() -> None:
        response = httpx.post(f"{relay.url}/v1/chat/completions", json={"model": "gptomni", "messages": HELLO},
                              headers={"Authorization": f"Bearer {relay.api_key}"}, timeout=10)
        results.append(response.status_code)
        if response.status_code == 429:
            assert response.headers["retry-after"] == "1"
            assert response.json()["error"]["code"] == "credentials_busy"

    threads = [threading.Thread(target=call) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(results) == [200, 200, 429, 429]


def test_cookies_never_reach_logs_metrics_traces_or_errors(make_relay: Any, tmp_path: Path,
                                                          caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    secrets = ["session=SECRET-ALPHA-1f3a", "session=SECRET-BETA-9c2e", "session=SECRET-GAMMA-77aa"]
    sim = SimulatorState(accepted={secrets[1], secrets[2]})
    sim.set(secrets[1], status=429, retry_after=60)
    sim.set(secrets[2], cut_after=2)
    relay = file_relay(make_relay, tmp_path, [entry(str(i), c) for i, c in enumerate(secrets)], sim=sim)
    http = relay.http()
    bodies = [http.post("/v1/chat/completions", json={"model": "gptomni", "messages": HELLO, "stream": s}).text
              for s in (True, False, True)]
    write_raw_pool_file(tmp_path, b'{"version": 1, "credentials": [{"id": "x", "cookie": "session=SECRET-NEW", "weight": 0}]}')
    wait_until(lambda: sample_value(relay.metrics_text(), "gptomni_pool_reloads_total", result="invalid") == 1)

    exported = relay.metrics_text() + http.get("/readyz").text + "".join(bodies)
    for span in relay.spans.get_finished_spans():
        exported += str(span.to_json())
    exported += "\n".join(record.getMessage() + repr(record.__dict__) for record in caplog.records)
    assert "upstream attempt failed" in exported  # the failures were really logged
    assert "SECRET" not in exported


def test_ejected_cookie_returns_after_a_successful_probe(make_relay: Any) -> None:
    sim = SimulatorState(accepted=set())
    relay = make_relay(sim=sim, cookies=["session=alpha"], eject_probe_seconds=0.2)
    assert relay.http().post("/v1/chat/completions", json={"model": "gptomni", "messages": HELLO}).status_code == 503
    assert ids(relay) == {"env/0": "ejected"}
    sim.accepted = {"session=alpha"}  # the account was fixed upstream
    wait_until(lambda: ids(relay) == {"env/0": "healthy"}, timeout=5)
    assert relay.http().post("/v1/chat/completions", json={"model": "gptomni", "messages": HELLO}).status_code == 200


def test_api_keys_from_a_mounted_file(make_relay: Any, tmp_path: Path) -> None:
    keys = tmp_path / "api-keys"
    keys.write_text("sk-from-file-one\nsk-from-file-two\n")
    relay = make_relay(api_keys=[], api_keys_file=keys)
    for key in ("sk-from-file-one", "sk-from-file-two"):
        response = httpx.post(f"{relay.url}/v1/chat/completions", json={"model": "gptomni", "messages": HELLO},
                              headers={"Authorization": f"Bearer {key}"})
        assert response.status_code == 200
    assert httpx.get(f"{relay.url}/v1/models", headers={"Authorization": "Bearer sk-test-key"}).status_code == 401


def test_a_key_removed_from_the_mounted_file_stops_working_without_a_restart(make_relay: Any, tmp_path: Path) -> None:
    keys = tmp_path / "api-keys"
    keys.write_text("sk-kept\nsk-revoked\n")
    relay = make_relay(api_keys=[], api_keys_file=keys, credentials_poll_seconds=0.1)

    def status(key: str) -> int:
        return httpx.get(f"{relay.url}/v1/models", headers={"Authorization": f"Bearer {key}"}).status_code

    assert status("sk-revoked") == 200
    replacement = tmp_path / "api-keys.new"
    replacement.write_text("sk-kept\nsk-added\n")
    os.replace(replacement, keys)  # a new file, as kubelet's swap makes
    wait_until(lambda: status("sk-revoked") == 401)
    assert status("sk-kept") == 200 and status("sk-added") == 200


def test_non_streaming_answer_that_breaks_is_retried_on_another_credential(make_relay: Any) -> None:
    sim = SimulatorState()
    sim.set("session=alpha", cut_after=2)
    relay = make_relay(sim=sim, cookies=["session=alpha", "session=beta"])
    for _ in range(3):
        completion = relay.client().chat.completions.create(model="gptomni", messages=HELLO)
        assert completion.choices[0].message.content == "Hello from the GPT-Omni simulator! You said: Hello"
    assert sessions_used(sim)["session=alpha"] >= 1  # it did break at least once, and nobody saw it
    assert relay.state.pool.total_in_flight() == 0
    assert sample_value(relay.metrics_text(), "gptomni_stream_interruptions_total") >= 1


def test_a_cookie_that_cannot_be_a_header_is_left_out_and_the_rest_serves(
        make_relay: Any, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.ERROR, logger="gptomni_relay.core.pool_sources")
    relay = file_relay(make_relay, tmp_path, [entry("bad", "session=SECRET-A\r\nX-Injected: 1"), entry("good", "session=b")])
    assert ids(relay) == {"default/good": "healthy"}
    for _ in range(3):
        assert relay.client().chat.completions.create(model="gptomni", messages=HELLO).choices
    assert all(chat.session == "session=b" for chat in relay.sim.received)
    logged = [record.__dict__ for record in caplog.records]
    assert any(record.get("credentials") == ["default/bad"] for record in logged)
    assert "SECRET" not in caplog.text + repr(logged)


@pytest.mark.parametrize(("replicas", "max_concurrency", "share"), [(1, 8, 8), (3, 8, 2), (3, 2, 1)])
def test_without_redis_each_replica_keeps_to_its_share(replicas: int, max_concurrency: int, share: int) -> None:
    """GPTOMNI_REPLICAS replicas, each with its own pool: together within the cookie's limit
    (at least one slot each, so a small limit still serves)."""
    async def slots_taken() -> int:
        pool = build_pool(RelaySettings(api_keys=["sk-x"], replicas=replicas))
        pool.replace([Credential("default/alice", "session=alice", max_concurrency=max_concurrency)])
        leases = []
        while len(leases) <= max_concurrency:
            try:
                leases.append(await pool.acquire())
            except AllBusy:
                break
        return len(leases)

    assert asyncio.run(slots_taken()) == share
