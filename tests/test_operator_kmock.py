"""The kmock tier: the kopf operator in this process against kmock's in-memory Kubernetes
API and the GPT-Omni simulator. Fast; for behaviour that needs no real API server (no
RBAC, no 409s, no schema). The real-server tier is tests/test_operator_apiserver.py."""

from __future__ import annotations

import asyncio
import base64
from typing import Any

import pytest

from gptomni_operator.cookies import cookie_digest
from gptomni_relay.simulator import SimulatorState
from tests.kube_client import healthy_condition
from tests.operator_env import ApiServerLikeEmulator, operator_env
from tests.polling import eventually

pytestmark = [pytest.mark.timeout(90), pytest.mark.kmock(cls=ApiServerLikeEmulator)]
NS = "default"


async def test_kmock_credential_becomes_healthy_and_joins_the_pool(kmock: Any) -> None:
    async with operator_env(kmock) as env:
        kube = env.kube
        await kube.add_cookie_credential("alice", weight=2, maxConcurrency=4)

        assert await eventually(lambda: kube.pool_is({f"{NS}/alice": "session=alice"}))
        pool = await kube.pool()
        entry = pool["document"]["credentials"][0]
        assert entry["weight"] == 2 and entry["maxConcurrency"] == 4 and pool["document"]["version"] == 1
        assert pool["secret"]["metadata"]["labels"]["app.kubernetes.io/managed-by"] == "gptomni-operator"
        assert "gptomni.io/content-hash" in pool["secret"]["metadata"]["annotations"]

        body = await eventually(lambda: kube.condition_is("alice", "Ready", "True", "InPool"))
        status = body["status"]
        assert healthy_condition(body)["status"] == "True"
        assert status["consecutiveFailures"] == 0 and status["lastLatencyMs"] >= 0
        assert status["lastCheckTime"] and status["nextCheckTime"]
        assert status["targetSecret"] == "gptomni-credentials"  # the default, in effect
        assert status["cookieDigest"] == cookie_digest("session=alice")
        assert "session=alice" not in str(body)  # the cookie never lands in the CR
        assert [c.session for c in env.sim.received] == ["session=alice"]
        assert "gptomni.io/pool-cleanup" in body["metadata"]["finalizers"]


async def test_kmock_rejected_cookie_leaves_the_pool_with_reason_and_event(kmock: Any) -> None:
    sim = SimulatorState()
    async with operator_env(kmock, sim) as env:
        kube = env.kube
        await kube.add_cookie_credential("bob", healthCheck={"interval": "10s"})
        await eventually(lambda: kube.pool_is({f"{NS}/bob": "session=bob"}))

        sim.accepted = set()  # GPT-Omni now rejects every cookie
        # Changing the Secret wakes the check at once instead of waiting for the interval.
        await kube.put_cookie_secret("bob-cookie", "session=bob-v2")
        body = await eventually(lambda: kube.healthy("bob", "False"))
        assert healthy_condition(body)["reason"] == "CookieRejected"
        assert await eventually(lambda: kube.pool_is({}))
        events = await eventually(lambda: kube.events_with_reason("CookieRejected"))
        assert events[0]["type"] == "Warning"
        assert "session=bob" not in str(await kube.events())


async def test_kmock_cookie_secret_update_is_rechecked_at_once(kmock: Any) -> None:
    async with operator_env(kmock) as env:
        kube = env.kube
        await kube.put_cookie_secret("carol-cookie", "session=carol-1")
        await kube.add_credential("carol", "carol-cookie")  # interval 5m: only a wake-up explains a re-check
        await eventually(lambda: kube.pool_is({f"{NS}/carol": "session=carol-1"}))
        await kube.put_cookie_secret("carol-cookie", "session=carol-2")
        await eventually(lambda: kube.pool_is({f"{NS}/carol": "session=carol-2"}))
        assert [c.session for c in env.sim.received] == ["session=carol-1", "session=carol-2"]


async def test_kmock_a_trailing_newline_is_the_same_cookie_for_the_watch_and_the_check(kmock: Any) -> None:
    """`kubectl create secret --from-file` stores the file's final newline: the watch must
    see the cookie the check judged, or every replayed watch event re-checks it."""
    async with operator_env(kmock) as env:
        kube = env.kube
        await kube.put_cookie_secret("dan-cookie", "session=dan\n")
        await kube.add_credential("dan", "dan-cookie")
        await eventually(lambda: kube.pool_is({f"{NS}/dan": "session=dan"}))
        assert (await kube.credential("dan"))["status"]["cookieDigest"] == cookie_digest("session=dan")
        # The same value delivered again (any edit of the Secret that keeps the cookie).
        await kube.ok("PATCH", f"{kube.secrets_path}/dan-cookie", {"metadata": {"labels": {"touched": "1"}}},
                      "application/merge-patch+json")
        await asyncio.sleep(1.5)
        assert [c.session for c in env.sim.received] == ["session=dan"]


async def test_kmock_missing_cookie_secret_is_reported(kmock: Any) -> None:
    async with operator_env(kmock) as env:
        await env.kube.add_credential("dave", "no-such-secret")
        body = await eventually(lambda: env.kube.healthy("dave", "False", "SecretNotFound"))
        assert "cookieDigest" not in body["status"]
        assert await eventually(lambda: env.kube.condition_is("dave", "Ready", "False", "NotInPool"))
        assert await env.kube.pool_is({})


async def test_kmock_deleted_credential_is_removed_before_it_goes(kmock: Any) -> None:
    async with operator_env(kmock) as env:
        kube = env.kube
        for name in ("fay", "gus"):
            await kube.add_cookie_credential(name)
        await eventually(lambda: kube.pool_is({f"{NS}/fay": "session=fay", f"{NS}/gus": "session=gus"}))
        await kube.delete(f"{kube.credentials_path}/fay")
        await eventually(lambda: kube.pool_is({f"{NS}/gus": "session=gus"}))
        assert await eventually(lambda: kube.gone("fay"))  # the finalizer was released


async def test_kmock_two_targets_move_and_suspend(kmock: Any) -> None:
    async with operator_env(kmock) as env:
        kube = env.kube
        await kube.put_cookie_secret("h-cookie", "session=h")
        await kube.put_cookie_secret("i-cookie", "session=i")
        await kube.add_credential("h", "h-cookie", targetSecret="pool-a")
        await kube.add_credential("i", "i-cookie", targetSecret="pool-b")
        await eventually(lambda: kube.pool_is({f"{NS}/h": "session=h"}, "pool-a"))
        await eventually(lambda: kube.pool_is({f"{NS}/i": "session=i"}, "pool-b"))
        await kube.patch_credential("i", {"suspend": True})
        await eventually(lambda: kube.pool_is({}, "pool-b"))
        assert await eventually(lambda: kube.healthy("i", "False", "Suspended"))
        await kube.patch_credential("h", {"targetSecret": "pool-b"})
        await eventually(lambda: kube.pool_is({}, "pool-a"))
        await eventually(lambda: kube.pool_is({f"{NS}/h": "session=h"}, "pool-b"))
        assert await eventually(lambda: kube.published_in("h", "pool-b"))


async def test_kmock_default_target_is_the_operators_setting(kmock: Any) -> None:
    """A credential without spec.targetSecret goes to the pool the chart's relay mounts."""
    async with operator_env(kmock, default_target_secret="team-pool") as env:
        kube = env.kube
        await kube.add_cookie_credential("kay")
        await eventually(lambda: kube.pool_is({f"{NS}/kay": "session=kay"}, "team-pool"))
        assert await eventually(lambda: kube.published_in("kay", "team-pool"))
        assert await kube.pool_cookies() is None  # nothing in gptomni-credentials


async def test_kmock_restarted_operator_neither_checks_nor_writes_again(kmock: Any) -> None:
    async with operator_env(kmock) as env:
        kube = env.kube
        for name in ("jo", "kim"):
            await kube.add_cookie_credential(name)
        expected = {f"{NS}/jo": "session=jo", f"{NS}/kim": "session=kim"}
        await eventually(lambda: kube.pool_is(expected))
        for name in ("jo", "kim"):
            await eventually(lambda name=name: kube.condition_is(name, "Ready", "True"))
        before = (await kube.pool())["secret"]["metadata"]["resourceVersion"]
        checks = len(env.sim.received)
    # A fresh operator on the same API: the statuses say both were checked moments ago.
    async with operator_env(kmock, env.sim) as env:
        await eventually(lambda: _writes(env, "unchanged"))
        pool = await env.kube.pool()
        assert {e["id"]: e["cookie"] for e in pool["document"]["credentials"]} == expected
        assert pool["secret"]["metadata"]["resourceVersion"] == before
        assert await _writes(env, "updated") == await _writes(env, "created") == 0
        assert len(env.sim.received) == checks  # nextCheckTime is honoured across restarts


async def test_kmock_operator_metrics(kmock: Any) -> None:
    async with operator_env(kmock) as env:
        await env.kube.add_cookie_credential("lee")
        await eventually(env.kube.pool_cookies)
        await eventually(lambda: _is(env.sample("gptomni_operator_healthy_credentials", secret_namespace=NS,
                                                secret="gptomni-credentials"), 1))
        assert await env.sample("gptomni_operator_checks_total", result="ok") == 1
        assert await env.sample("gptomni_operator_checks_total") == 1  # no other result
        assert await env.sample("gptomni_operator_check_duration_seconds_count") == 1
        assert await env.sample("gptomni_operator_up") == 1


async def test_kmock_a_secret_not_managed_by_the_operator_is_never_overwritten(kmock: Any) -> None:
    async with operator_env(kmock) as env:
        kube = env.kube
        await kube.put_cookie_secret("gptomni-credentials", "someone else's data", key="credentials.json")
        await kube.add_cookie_credential("nia")
        body = await eventually(lambda: kube.condition_is("nia", "Ready", "False", "TargetSecretConflict"))
        assert healthy_condition(body)["status"] == "True"  # the cookie itself is fine
        secret = await kube.secret("gptomni-credentials")
        assert secret["data"]["credentials.json"] == "c29tZW9uZSBlbHNlJ3MgZGF0YQ=="  # untouched
        # Once the foreign Secret is gone, the pool is created in its place.
        await kube.delete(f"{kube.secrets_path}/gptomni-credentials")
        await eventually(lambda: kube.pool_is({f"{NS}/nia": "session=nia"}))
        assert await eventually(lambda: kube.condition_is("nia", "Ready", "True", "InPool"))


async def test_kmock_upgrade_from_statuses_without_a_cookie_digest_keeps_the_pool(kmock: Any) -> None:
    """Statuses written before cookie digests existed: the pool keeps its members while
    each is judged again at once (which records the digest)."""
    from gptomni_common.pool_file import PoolDocument, PoolEntry
    from gptomni_operator.publisher import MANAGED_LABELS, content_hash

    old_status = {"conditions": [{"type": "Healthy", "status": "True", "reason": "CheckPassed", "observedGeneration": 1},
                                 {"type": "Ready", "status": "True", "reason": "InPool", "observedGeneration": 1}],
                  "observedGeneration": 1, "nextCheckTime": "2099-01-01T00:00:00Z"}
    document = PoolDocument(version=1, credentials=[PoolEntry(id=f"{NS}/old", cookie="session=old", weight=1, maxConcurrency=8)])
    async with operator_env(kmock) as env:
        kube = env.kube
        await kube.put_cookie_secret("old-cookie", "session=old")
        await kube.ok("POST", kube.secrets_path, {
            "metadata": {"name": "gptomni-credentials", "namespace": NS, "labels": MANAGED_LABELS,
                         "annotations": {"gptomni.io/content-hash": content_hash(document.credentials)}},
            "data": {"credentials.json": base64.b64encode(document.model_dump_json(by_alias=True).encode()).decode()}})
        await kube.ok("POST", kube.credentials_path, {
            "apiVersion": "gptomni.io/v1alpha1", "kind": "GPTOmniCredential", "metadata": {"name": "old", "namespace": NS},
            "spec": {"cookieSecretRef": {"name": "old-cookie"}}, "status": old_status})
        body = await eventually(lambda: _with_digest(kube, "old"))
        assert body["status"]["cookieDigest"] == cookie_digest("session=old")
        await eventually(lambda: _writes(env, "unchanged"))
        assert await kube.pool_is({f"{NS}/old": "session=old"})
        assert await _writes(env, "updated") == 0


async def _with_digest(kube: Any, name: str) -> dict[str, Any] | None:
    body = await kube.credential(name)
    return body if (body or {}).get("status", {}).get("cookieDigest") else None


async def _writes(env: Any, result: str) -> float:
    return await env.sample("gptomni_operator_secret_writes_total", result=result)


async def _is(value: Any, expected: float) -> bool:
    return await value == expected
