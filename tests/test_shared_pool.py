"""One pool for every replica: real relays (uvicorn on 127.0.0.1) sharing a real Redis and
one simulated GPT-Omni, whose per-cookie peak of concurrent answers is the ground truth.

Several relays in one test share one `SimulatorState`: each harness serves it on its own
port, so the simulator counts every replica's requests together.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from gptomni_relay.core.pool import Health, PoolMode
from gptomni_relay.edge.server import serve_app
from gptomni_relay.simulator import Behaviour, SimulatorState, build_simulator_app
from tests.harness import API_KEY, BackgroundLoop, Harness, sample_value
from tests.polling import eventually
from tests.processes import relay_process
from tests.redis_server import RedisServer

MESSAGES = [{"role": "user", "content": "hello"}]
SOLO = "session=solo"


def start_replicas(make_relay: Callable[..., Harness], sim: SimulatorState, count: int, **settings: Any) -> list[Harness]:
    options: dict[str, Any] = {"cookies": [SOLO], "replicas": count, "acquire_timeout_seconds": 10,
                               "pool_lease_seconds": 2}
    options.update(settings)
    return [make_relay(sim=sim, **options) for _ in range(count)]


async def ask(relay: Harness, **kwargs: Any) -> int:
    """One non-streamed request; its HTTP status."""
    async with httpx.AsyncClient(base_url=relay.url, headers={"Authorization": f"Bearer {API_KEY}"}, timeout=30) as http:
        response = await http.post("/v1/chat/completions", json={"model": "gptomni", "messages": MESSAGES, **kwargs})
        return response.status_code


async def burst(targets: list[Harness]) -> list[int]:
    """One request to each target (repeat a relay to send it more), all at the same moment."""
    return await asyncio.gather(*(ask(relay) for relay in targets))


def mode_of(relay: Harness) -> PoolMode:
    return relay.state.pool.mode


# --- the limit holds across replicas ------------------------------------------------------

@pytest.mark.parametrize("shared", [True, False], ids=["shared", "per-replica-control"])
async def test_max_concurrency_one_holds_across_two_replicas(redis_server: RedisServer, make_relay, shared: bool) -> None:  # noqa: ANN001
    sim = SimulatorState(default=Behaviour(token_delay=0.05, answer_words=5))
    store = {"redis_url": redis_server.url} if shared else {}
    a, b = start_replicas(make_relay, sim, 2, default_max_concurrency=1, **store)
    assert {mode_of(a), mode_of(b)} == {PoolMode.SHARED if shared else PoolMode.LOCAL}
    statuses = await burst([a, b, a, b, a, b])
    assert statuses == [200] * 6
    # The control shows the simulator would see the overlap: per-replica pools allow 2.
    assert sim.peak_by_session[SOLO] == (1 if shared else 2)


async def test_three_relay_processes_never_exceed_the_limit_together(redis_server: RedisServer,
                                                                     servers: BackgroundLoop) -> None:
    """Three `python -m gptomni_relay` processes, one Redis, one simulated GPT-Omni: bursts
    that would put up to 3 x 2 answers on the cookie if each process had its own pool."""
    sim = SimulatorState(default=Behaviour(token_delay=0.05, answer_words=6))
    upstream = servers.enter(serve_app(build_simulator_app(sim)))
    env = {"GPTOMNI_UPSTREAM_URL": upstream.url, "GPTOMNI_API_KEYS": API_KEY, "GPTOMNI_CREDENTIALS": f'["{SOLO}"]',
           "GPTOMNI_DEFAULT_MAX_CONCURRENCY": "2", "GPTOMNI_REDIS_URL": redis_server.url, "GPTOMNI_REPLICAS": "3",
           "GPTOMNI_ACQUIRE_TIMEOUT_SECONDS": "20", "GPTOMNI_HOST": "127.0.0.1", "GPTOMNI_LOG_FORMAT": "text"}
    with relay_process(env=env) as a, relay_process(env=env) as b, relay_process(env=env) as c:
        async with contextlib.AsyncExitStack() as stack:
            clients = [await stack.enter_async_context(httpx.AsyncClient(
                base_url=relay.url, headers={"Authorization": f"Bearer {API_KEY}"}, timeout=30)) for relay in (a, b, c)]
            for _ in range(2):
                statuses = await asyncio.gather(*(
                    client.post("/v1/chat/completions", json={"model": "gptomni", "messages": MESSAGES})
                    for client in clients * 4))
                assert [response.status_code for response in statuses] == [200] * 12
    assert sim.peak_by_session[SOLO] == 2
    assert sim.completed == 24


async def test_selection_counts_every_replicas_requests(redis_server: RedisServer, make_relay) -> None:  # noqa: ANN001
    sim = SimulatorState(default=Behaviour(token_delay=0.1, answer_words=30))  # ~3 s: held while we look
    a, b = start_replicas(make_relay, sim, 2, cookies=["session=x", "session=y"], default_max_concurrency=4,
                          redis_url=redis_server.url)
    held = [asyncio.ensure_future(ask(a)) for _ in range(3)]
    await eventually(lambda: sim.active == 3, timeout=10)
    held.append(asyncio.ensure_future(ask(b)))  # B holds nothing itself: only the store knows x and y's loads
    await eventually(lambda: sim.active == 4, timeout=10)
    assert dict(sim.active_by_session) == {"session=x": 2, "session=y": 2}
    held.append(asyncio.ensure_future(ask(b)))
    held.append(asyncio.ensure_future(ask(a)))
    await eventually(lambda: sim.active == 6, timeout=10)
    assert dict(sim.active_by_session) == {"session=x": 3, "session=y": 3}
    assert await asyncio.gather(*held) == [200] * 6


# --- verdicts reach every replica ---------------------------------------------------------

async def test_a_rate_limit_seen_by_one_replica_cools_the_cookie_on_the_other(redis_server: RedisServer, make_relay) -> None:  # noqa: ANN001
    sim = SimulatorState()
    sim.set("session=limited", status=429, retry_after=60)
    a, b = start_replicas(make_relay, sim, 2, cookies=["session=limited", "session=fine"], redis_url=redis_server.url)
    for _ in range(4):  # ties rotate: within a few requests A tries the limited cookie (and fails over)
        assert await ask(a) == 200
        if any(r.session == "session=limited" for r in sim.received):
            break
    assert any(r.session == "session=limited" for r in sim.received)
    seen = len(sim.received)
    for _ in range(6):  # B's acquire reads the store: not one attempt on the limited cookie
        assert await ask(b) == 200
    assert {r.session for r in list(sim.received)[seen:]} == {"session=fine"}
    # B's own view (metrics, readiness) mirrors the store at its next sync tick.
    await b.sync_pool()
    assert {s.id: s.health for s in b.state.pool.statuses()}["env/0"] is Health.COOLING
    assert sample_value(b.metrics_text(), "gptomni_credential_state", credential="env/0", state="cooling") == 1


async def test_an_ejection_on_one_replica_makes_the_other_unready(redis_server: RedisServer, make_relay) -> None:  # noqa: ANN001
    sim = SimulatorState(accepted=set())  # every cookie rejected: 401
    a, b = start_replicas(make_relay, sim, 2, redis_url=redis_server.url)
    assert b.http().get("/readyz").status_code == 200
    assert await ask(a) == 503
    await b.sync_pool()  # B's readiness mirrors the store at its next sync tick
    assert b.http().get("/readyz").status_code == 503
    seen = len(sim.received)
    assert await ask(b) == 503
    assert len(sim.received) == seen  # B never sent the rejected cookie to GPT-Omni


# --- leases: expire with a dead replica, renewed while a stream runs ----------------------

async def test_a_replica_killed_mid_stream_frees_its_slot_within_the_lease_time(redis_server: RedisServer, make_relay) -> None:  # noqa: ANN001
    sim = SimulatorState(default=Behaviour(token_delay=0.05, answer_words=3))
    sim.set(SOLO, token_delay=0.1, answer_words=200)  # the doomed replica's stream: 20 s
    lease_seconds = 2.0
    [b] = start_replicas(make_relay, sim, 1, default_max_concurrency=1, redis_url=redis_server.url,
                         pool_lease_seconds=lease_seconds, acquire_timeout_seconds=0)
    env = {"GPTOMNI_UPSTREAM_URL": b.sim_server.url, "GPTOMNI_API_KEYS": API_KEY,
           "GPTOMNI_CREDENTIALS": f'["{SOLO}"]', "GPTOMNI_DEFAULT_MAX_CONCURRENCY": "1",
           "GPTOMNI_REDIS_URL": redis_server.url, "GPTOMNI_POOL_LEASE_SECONDS": str(lease_seconds),
           "GPTOMNI_HOST": "127.0.0.1", "GPTOMNI_METRICS_PORT": "0", "GPTOMNI_EJECT_PROBE_SECONDS": "0",
           "GPTOMNI_LOG_FORMAT": "text"}
    with relay_process(env=env) as doomed:
        async with httpx.AsyncClient(base_url=doomed.url, headers={"Authorization": f"Bearer {API_KEY}"}) as http:
            stream = asyncio.ensure_future(http.post("/v1/chat/completions", timeout=30,
                                                     json={"model": "gptomni", "messages": MESSAGES, "stream": True}))
            await eventually(lambda: sim.active_by_session[SOLO] == 1, timeout=10)
            sim.set(SOLO, token_delay=0.05, answer_words=3)  # B's answers are short
            doomed.process.send_signal(signal.SIGKILL)
            killed = time.monotonic()
            doomed.process.wait(10)
            await asyncio.gather(stream, return_exceptions=True)
    # The dead replica's lease still holds the only slot: B is refused at once...
    assert await ask(b) == 429
    assert redis_server.client().zcard("{gptomni}:leases:env/0") == 1
    # ...until the lease runs out, unrenewed (Redis's clock: no fake one reaches it).
    async def admitted() -> bool:
        return await ask(b) == 200

    await eventually(admitted, timeout=lease_seconds + 1.5, step=0.1, what="the dead replica's slot coming back")
    assert time.monotonic() - killed > lease_seconds - 0.6  # freed by expiry (the last renewal ≤ 0.5 s before)


async def test_a_stream_longer_than_the_lease_keeps_its_slot(redis_server: RedisServer, make_relay,  # noqa: ANN001
                                                           servers: BackgroundLoop) -> None:
    # GPT-Omni holds a's answer after its first piece until the test lets it end, so the
    # stream outlives the 1 s lease by as long as the checks take, however slow the machine.
    hold = asyncio.Event()
    sim = SimulatorState(default=Behaviour(answer_words=5, hold=hold))
    a, b = start_replicas(make_relay, sim, 2, default_max_concurrency=1, redis_url=redis_server.url,
                          pool_lease_seconds=1, acquire_timeout_seconds=0)
    long_stream = asyncio.ensure_future(ask(a, stream=True))
    await eventually(lambda: sim.active == 1, timeout=10)
    leases = redis_server.client()
    for _ in range(3):  # each check a lease time apart: the lease must have been renewed
        await asyncio.sleep(1.2)
        assert await ask(b) == 429, "b was let in while a's stream still held the cookie"
        assert leases.zcard("{gptomni}:leases:env/0") == 1
    assert sim.completed == 0
    servers.loop.call_soon_threadsafe(hold.set)
    assert await long_stream == 200
    assert sim.peak_by_session[SOLO] == 1
    assert await ask(b) == 200  # released at the end


# --- the store fails: fallback shares, then recovery --------------------------------------

async def test_store_outage_falls_back_to_shares_and_recovers(redis_server: RedisServer, make_relay,
                                                              caplog: pytest.LogCaptureFixture) -> None:  # noqa: ANN001
    caplog.set_level(logging.INFO, logger="gptomni_relay.core.shared_pool")
    sim = SimulatorState(default=Behaviour(token_delay=0.05, answer_words=6))
    a, b = start_replicas(make_relay, sim, 2, default_max_concurrency=4, redis_url=redis_server.url)
    assert await burst([a] * 6) == [200] * 6
    assert sim.peak_by_session[SOLO] == 4  # shared: one replica may use the whole limit

    redis_server.stop()
    await eventually(lambda: mode_of(a) is PoolMode.FALLBACK and mode_of(b) is PoolMode.FALLBACK, timeout=10)
    metrics = a.metrics_text()
    assert sample_value(metrics, "gptomni_pool_mode", mode="fallback") == 1
    assert sample_value(metrics, "gptomni_shared_store_up") == 0
    assert httpx.get(a.metrics_url.replace("/metrics", "/readyz"), timeout=10).json() == {"ready": True,
                                                                                        "pool": "fallback"}
    assert any("store unreachable" in r.message and r.shares == {"env/0": 2} for r in caplog.records)
    sim.peak_by_session.clear()
    assert await burst([a] * 6) == [200] * 6
    assert sim.peak_by_session[SOLO] == 2  # A alone: its share, 4 // 2
    sim.peak_by_session.clear()
    assert await burst([a, b] * 6) == [200] * 12
    assert sim.peak_by_session[SOLO] <= 4  # the shares add up to the limit

    redis_server.start()
    await eventually(lambda: mode_of(a) is PoolMode.SHARED and mode_of(b) is PoolMode.SHARED, timeout=10)
    assert sample_value(b.metrics_text(), "gptomni_shared_store_up") == 1
    assert any("back to cluster-wide limits" in r.message for r in caplog.records)
    sim.peak_by_session.clear()
    assert await burst([a] * 6) == [200] * 6
    assert sim.peak_by_session[SOLO] == 4


async def test_requests_taken_beyond_a_share_before_the_outage_count_against_the_others(
        redis_server: RedisServer, make_relay) -> None:  # noqa: ANN001
    sim = SimulatorState(default=Behaviour(token_delay=0.1, answer_words=40))  # ~4 s: held through the outage
    a, b = start_replicas(make_relay, sim, 2, default_max_concurrency=4, redis_url=redis_server.url,
                          acquire_timeout_seconds=0, pool_lease_seconds=10)
    held = [asyncio.ensure_future(ask(a)) for _ in range(3)] + [asyncio.ensure_future(ask(b))]
    await eventually(lambda: sim.active == 4, timeout=10)
    await a.sync_pool()  # each replica learns from the store who holds what
    await b.sync_pool()
    redis_server.stop()
    await eventually(lambda: mode_of(a) is PoolMode.FALLBACK and mode_of(b) is PoolMode.FALLBACK, timeout=10)
    # B's share is 2, but A still holds 3 (one beyond its share): B may not take a second.
    assert b.state.pool.share(b.state.static_credentials[0]) == 1
    assert await ask(b) == 429 and await ask(a) == 429
    assert sim.peak_by_session[SOLO] == 4
    assert await asyncio.gather(*held) == [200] * 4


async def test_store_stopped_and_restarted_under_load_fails_no_request(redis_server: RedisServer, make_relay) -> None:  # noqa: ANN001
    sim = SimulatorState(default=Behaviour(token_delay=0.03, answer_words=6))
    replicas = start_replicas(make_relay, sim, 2, default_max_concurrency=4, redis_url=redis_server.url)
    results: list[int] = []
    current: dict[int, float] = {}  # worker -> when its current request started
    stop = asyncio.Event()

    async def worker(number: int, relay: Harness) -> None:
        for _ in range(300):  # bounded; the test ends it far sooner
            if stop.is_set():
                return
            current[number] = time.monotonic()
            results.append(await ask(relay, stream=True))

    workers = [asyncio.ensure_future(worker(n, replicas[n % 2])) for n in range(6)]  # 6 > the limit of 4
    try:
        await eventually(lambda: len(results) >= 20, timeout=10)
        assert sim.peak_by_session[SOLO] <= 4
        redis_server.stop()
        await eventually(lambda: all(mode_of(r) is PoolMode.FALLBACK for r in replicas), timeout=10)
        # Requests taken in shared mode run on into the outage (the previous test bounds
        # them); from the first request each worker starts in fallback on, the shares hold.
        fell_back = time.monotonic()
        await eventually(lambda: min(current.values()) > fell_back, timeout=10)
        sim.peak_by_session.clear()
        during_outage = len(results)
        await eventually(lambda: len(results) >= during_outage + 20, timeout=10)
        redis_server.start()
        await eventually(lambda: all(mode_of(r) is PoolMode.SHARED for r in replicas), timeout=10)
        recovered = len(results)
        await eventually(lambda: len(results) >= recovered + 20, timeout=10)
    finally:
        stop.set()
        await asyncio.wait_for(asyncio.gather(*workers), 30)
    assert results == [200] * len(results)
    assert sim.peak_by_session[SOLO] <= 4  # through the outage, the recovery and after
    assert sum(r.state.pool.total_in_flight() for r in replicas) == 0


# --- configuration ------------------------------------------------------------------------

async def test_the_store_password_comes_from_a_file_and_is_never_shown(make_relay, tmp_path: Path,
                                                                        caplog: pytest.LogCaptureFixture) -> None:  # noqa: ANN001
    password = "pw-" + "s3cr3t" * 4
    server = RedisServer(tmp_path, password=password)
    server.start()
    try:
        secret = tmp_path / "redis-password"
        secret.write_text(password + "\n")
        good = make_relay(redis_url=server.url, redis_password_file=secret)
        assert mode_of(good) is PoolMode.SHARED and await ask(good) == 200
        wrong = tmp_path / "wrong"
        wrong.write_text("not-the-password")
        bad = make_relay(redis_url=server.url, redis_password_file=wrong)
        assert mode_of(bad) is PoolMode.FALLBACK and await ask(bad) == 200  # served at its share
        assert any("store unreachable" in r.message for r in caplog.records)
        shown = caplog.text + good.metrics_text() + bad.metrics_text() + str(good.state.settings)
        assert password not in shown and "s3cr3t" not in shown
    finally:
        server.stop()


def test_without_a_store_the_pool_is_in_process(relay: Harness) -> None:
    assert mode_of(relay) is PoolMode.LOCAL
    metrics = relay.metrics_text()
    assert sample_value(metrics, "gptomni_pool_mode", mode="local") == 1
    assert "gptomni_shared_store_up" not in metrics


def test_openai_client_through_a_shared_pool(redis_server: RedisServer, make_relay) -> None:  # noqa: ANN001
    relay = make_relay(redis_url=redis_server.url)
    chunks = list(relay.client().chat.completions.create(model="gptomni", messages=MESSAGES, stream=True))
    assert chunks[-1].choices[0].finish_reason == "stop"
    with pytest.raises(openai.APIStatusError):
        relay.client().chat.completions.create(model="gptomni", messages=[])
    assert relay.state.pool.total_in_flight() == 0
    assert redis_server.client().zcard("{gptomni}:leases:env/0") == 0
