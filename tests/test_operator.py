"""The kopf operator against a Kubernetes API (kmock) and the GPT-Omni simulator."""

from __future__ import annotations

import asyncio
import base64
from typing import Any

import pytest

from gptomni_relay.simulator import SimulatorState
from tests.harness import sample_value
from tests.operator_env import (
    CR_PATH,
    NS,
    SECRETS_PATH,
    ApiServerLikeEmulator,
    eventually,
    healthy_condition,
    operator_env,
)

pytestmark = [pytest.mark.timeout(90), pytest.mark.kmock(cls=ApiServerLikeEmulator)]


async def test_credential_becomes_healthy_and_joins_the_pool(kmock: Any) -> None:
    async with operator_env(kmock) as env:
        await env.put_cookie_secret("alice-cookie", "session=alice")
        await env.create_credential("alice", "alice-cookie", weight=2, maxConcurrency=4)

        cookies = await eventually(env.pool_cookies)
        assert cookies == {f"{NS}/alice": "session=alice"}
        pool = await env.pool()
        entry = pool["document"]["credentials"][0]
        assert entry["weight"] == 2 and entry["maxConcurrency"] == 4 and pool["document"]["version"] == 1
        labels = pool["secret"]["metadata"]["labels"]
        assert labels["app.kubernetes.io/managed-by"] == "gptomni-operator"
        assert "gptomni.io/content-hash" in pool["secret"]["metadata"]["annotations"]

        body = await eventually(lambda: _healthy(env, "alice", "True"))
        status = body["status"]
        assert status["consecutiveFailures"] == 0 and status["lastLatencyMs"] >= 0
        assert status["lastCheckTime"] and status["nextCheckTime"]
        ready = [c for c in status["conditions"] if c["type"] == "Ready"][0]
        assert ready["status"] == "True" and ready["reason"] == "InPool"
        assert "session=alice" not in str(body)  # the cookie never lands in the CR
        assert [c.session for c in env.sim.received] == ["session=alice"]
        assert "finalizers" in body["metadata"] and "gptomni.io/pool-cleanup" in body["metadata"]["finalizers"]


async def test_rejected_cookie_leaves_the_pool_with_reason_and_event(kmock: Any) -> None:
    sim = SimulatorState()
    async with operator_env(kmock, sim) as env:
        await env.put_cookie_secret("bob-cookie", "session=bob")
        await env.create_credential("bob", "bob-cookie", healthCheck={"interval": "10s"})
        await eventually(env.pool_cookies)

        sim.accepted = set()  # GPT-Omni now rejects every cookie
        # Changing the Secret wakes the check at once instead of waiting for the interval.
        await env.put_cookie_secret("bob-cookie", "session=bob-v2")
        body = await eventually(lambda: _healthy(env, "bob", "False"))
        assert healthy_condition(body)["reason"] == "CookieRejected"
        assert await eventually(lambda: _pool_is(env, {}))
        events = await eventually(lambda: _events_with_reason(env, "CookieRejected"))
        assert events[0]["type"] == "Warning"
        assert "session=bob" not in str(await env.events())


async def test_cookie_secret_update_is_rechecked_at_once(kmock: Any) -> None:
    async with operator_env(kmock) as env:
        await env.put_cookie_secret("carol-cookie", "session=carol-1")
        await env.create_credential("carol", "carol-cookie")  # interval 5m: only a wake-up explains a re-check
        await eventually(lambda: _pool_is(env, {f"{NS}/carol": "session=carol-1"}))
        await env.put_cookie_secret("carol-cookie", "session=carol-2")
        await eventually(lambda: _pool_is(env, {f"{NS}/carol": "session=carol-2"}))
        assert [c.session for c in env.sim.received] == ["session=carol-1", "session=carol-2"]


async def test_missing_cookie_secret_is_reported(kmock: Any) -> None:
    async with operator_env(kmock) as env:
        await env.create_credential("dave", "no-such-secret")
        body = await eventually(lambda: _healthy(env, "dave", "False"))
        assert healthy_condition(body)["reason"] == "SecretNotFound"
        assert await env.pool_cookies() in (None, {})


async def test_deleting_the_cookie_secret_takes_it_out(kmock: Any) -> None:
    async with operator_env(kmock) as env:
        await env.put_cookie_secret("erin-cookie", "session=erin")
        await env.create_credential("erin", "erin-cookie")
        await eventually(env.pool_cookies)
        await env.delete(f"{SECRETS_PATH}/erin-cookie")
        body = await eventually(lambda: _healthy(env, "erin", "False"))
        assert healthy_condition(body)["reason"] == "SecretNotFound"
        assert await eventually(lambda: _pool_is(env, {}))


async def test_deleted_credential_is_removed_before_it_goes(kmock: Any) -> None:
    async with operator_env(kmock) as env:
        for name in ("fay", "gus"):
            await env.put_cookie_secret(f"{name}-cookie", f"session={name}")
            await env.create_credential(name, f"{name}-cookie")
        await eventually(lambda: _pool_is(env, {f"{NS}/fay": "session=fay", f"{NS}/gus": "session=gus"}))
        await env.delete(f"{CR_PATH}/fay")
        await eventually(lambda: _pool_is(env, {f"{NS}/gus": "session=gus"}))
        assert await eventually(lambda: _gone(env, "fay"))  # the finalizer was released


async def test_two_targets_and_suspend(kmock: Any) -> None:
    async with operator_env(kmock) as env:
        await env.put_cookie_secret("h-cookie", "session=h")
        await env.put_cookie_secret("i-cookie", "session=i")
        await env.create_credential("h", "h-cookie", targetSecret="pool-a")
        await env.create_credential("i", "i-cookie", targetSecret="pool-b")
        await eventually(lambda: _pool_is(env, {f"{NS}/h": "session=h"}, "pool-a"))
        await eventually(lambda: _pool_is(env, {f"{NS}/i": "session=i"}, "pool-b"))
        await env.patch_credential("i", {"suspend": True})
        await eventually(lambda: _pool_is(env, {}, "pool-b"))
        body = await env.credential("i")
        assert healthy_condition(body)["reason"] == "Suspended"
        await env.patch_credential("h", {"targetSecret": "pool-b"})
        await eventually(lambda: _pool_is(env, {}, "pool-a"))
        await eventually(lambda: _pool_is(env, {f"{NS}/h": "session=h"}, "pool-b"))


async def test_restarted_operator_keeps_the_pool_unchanged(kmock: Any) -> None:
    async with operator_env(kmock) as env:
        for name in ("jo", "kim"):
            await env.put_cookie_secret(f"{name}-cookie", f"session={name}")
            await env.create_credential(name, f"{name}-cookie")
        expected = {f"{NS}/jo": "session=jo", f"{NS}/kim": "session=kim"}
        await eventually(lambda: _pool_is(env, expected))
        await eventually(lambda: _healthy(env, "jo", "True"))
        await eventually(lambda: _healthy(env, "kim", "True"))
        before = (await env.pool())["secret"]["metadata"]["annotations"]["gptomni.io/content-hash"]
        writes_before = await env.metrics()
    # A fresh operator on the same API: state is rebuilt from CR statuses and Secrets.
    async with operator_env(kmock) as env:
        await eventually(lambda: _checked_twice(env, 2))
        metrics = await eventually(lambda: _metrics_with(env, 'gptomni_operator_secret_writes_total{result="unchanged"} 2.0'))
        pool = await env.pool()
        assert {e["id"]: e["cookie"] for e in pool["document"]["credentials"]} == expected
        assert pool["secret"]["metadata"]["annotations"]["gptomni.io/content-hash"] == before
        assert sample_value(metrics, "gptomni_operator_secret_writes_total", result="updated") == 0
        assert sample_value(metrics, "gptomni_operator_secret_writes_total", result="created") == 0
        assert sample_value(writes_before, "gptomni_operator_secret_writes_total", result="created") == 1


async def test_operator_metrics(kmock: Any) -> None:
    async with operator_env(kmock) as env:
        await env.put_cookie_secret("lee-cookie", "session=lee")
        await env.create_credential("lee", "lee-cookie")
        await eventually(env.pool_cookies)
        text = await eventually(lambda: _metrics_with(env, 'gptomni_operator_checks_total{result="ok"} 1.0'))
        assert sample_value(text, "gptomni_operator_healthy_credentials",
                            secret_namespace="default", secret="gptomni-credentials") == 1
        assert "gptomni_operator_check_duration_seconds_count 1.0" in text
        assert "gptomni_operator_up 1.0" in text


async def _healthy(env: Any, name: str, status: str) -> dict[str, Any] | None:
    body = await env.credential(name)
    found = healthy_condition(body)
    return body if found and found["status"] == status else None


async def _pool_is(env: Any, expected: dict[str, str], secret: str = "gptomni-credentials") -> bool:
    return (await env.pool_cookies(secret) or {}) == expected and (await env.pool(secret)) is not None


async def _events_with_reason(env: Any, reason: str) -> list[dict[str, Any]]:
    return [e for e in await env.events() if e.get("reason") == reason]


async def _gone(env: Any, name: str) -> bool:
    return await env.credential(name) is None


async def _checked_twice(env: Any, count: int) -> bool:
    return len(env.sim.received) >= count


async def _metrics_with(env: Any, needle: str) -> str | None:
    text = await env.metrics()
    return text if needle in text else None


async def test_end_to_end_operator_secret_feeds_the_running_relay(kmock: Any, make_relay: Any, tmp_path: Any) -> None:
    """Operator writes the pool Secret; the test projects it as kubelet does; the relay serves with it."""
    from tests.harness import write_raw_pool_file

    sim = SimulatorState(accepted={"session=first", "session=second"})
    pool_dir = tmp_path / "pool"
    write_raw_pool_file(pool_dir, b'{"version": 1, "credentials": []}')
    relay = make_relay(sim=sim, cookies=[], credentials_file=pool_dir / "credentials.json", credentials_poll_seconds=0.1)

    async def project() -> None:
        pool = await env.pool()
        write_raw_pool_file(pool_dir, base64.b64decode(pool["secret"]["data"]["credentials.json"]))

    async def relay_answers() -> bool:
        response = await asyncio.to_thread(
            relay.http().post, "/v1/chat/completions", json={"model": "gptomni", "messages": [{"role": "user", "content": "hi"}]}
        )
        return response.status_code == 200

    async with operator_env(kmock, sim) as env:
        await env.put_cookie_secret("web-cookie", "session=first")
        await env.create_credential("web", "web-cookie")
        await eventually(lambda: _pool_is(env, {f"{NS}/web": "session=first"}))
        await project()
        assert await eventually(relay_answers)
        assert sim.received[-1].session == "session=first" and sim.received[-1].prompt == "hi"

        await env.put_cookie_secret("web-cookie", "session=second")
        await eventually(lambda: _pool_is(env, {f"{NS}/web": "session=second"}))
        await project()
        await eventually(lambda: _relay_uses(relay, "session=second"))
        assert [s.id for s in relay.state.pool.statuses()] == [f"{NS}/web"]


async def _relay_uses(relay: Any, cookie: str) -> bool:
    await asyncio.to_thread(
        relay.http().post, "/v1/chat/completions", json={"model": "gptomni", "messages": [{"role": "user", "content": "hi"}]}
    )
    return relay.sim.received[-1].session == cookie


async def test_a_secret_not_managed_by_the_operator_is_never_overwritten(kmock: Any) -> None:
    async with operator_env(kmock) as env:
        await env.put_cookie_secret("gptomni-credentials", "someone else's data", key="credentials.json")
        await env.put_cookie_secret("nia-cookie", "session=nia")
        await env.create_credential("nia", "nia-cookie")
        body = await eventually(lambda: _ready_reason(env, "nia", "TargetSecretConflict"))
        assert healthy_condition(body)["status"] == "True"  # the cookie itself is fine
        status, secret = await env.request("GET", f"{SECRETS_PATH}/gptomni-credentials")
        assert base64.b64decode(secret["data"]["credentials.json"]) == b"someone else's data"


async def _ready_reason(env: Any, name: str, reason: str) -> dict[str, Any] | None:
    body = await env.credential(name)
    for item in ((body or {}).get("status") or {}).get("conditions") or []:
        if item["type"] == "Ready" and item["reason"] == reason:
            return body
    return None


async def test_operator_process_as_deployed(kmock: Any) -> None:
    """`gptomni-operator` as the chart runs it: a real process, its metrics and liveness ports."""
    import os
    import subprocess
    import sys

    import aiohttp

    from gptomni_relay.server import serve_app
    from gptomni_relay.simulator import build_simulator_app
    from tests.operator_env import OperatorEnv, declare_resources
    from tests.processes import free_port

    declare_resources(kmock)
    sim = SimulatorState()
    metrics_port, liveness_port = free_port(), free_port()
    async with serve_app(build_simulator_app(sim)) as sim_server, aiohttp.ClientSession() as http:
        env = {**{k: v for k, v in os.environ.items() if not k.startswith("GPTOMNI_")},
               "GPTOMNI_UPSTREAM_URL": sim_server.url, "GPTOMNI_OPERATOR_KUBE_SERVER": str(kmock.url).rstrip("/")}
        process = subprocess.Popen(
            [sys.executable, "-m", "gptomni_operator", "--all-namespaces", f"--metrics-port={metrics_port}",
             f"--liveness=http://127.0.0.1:{liveness_port}/healthz"],
            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        try:
            client = OperatorEnv(kmock, http, sim, sim_server, None, metrics_port)  # type: ignore[arg-type]
            await client.put_cookie_secret("ola-cookie", "session=ola")
            await client.create_credential("ola", "ola-cookie")
            await eventually(lambda: _pool_is(client, {f"{NS}/ola": "session=ola"}), timeout=30)
            assert "gptomni_operator_up 1.0" in await eventually(client.metrics)

            async def alive() -> bool:
                try:
                    async with http.get(f"http://127.0.0.1:{liveness_port}/healthz") as response:
                        return response.status == 200
                except aiohttp.ClientError:
                    return False

            assert await eventually(alive)
        finally:
            process.terminate()
            assert await asyncio.to_thread(process.wait, 30) == 0
