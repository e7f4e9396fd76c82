"""The real-API-server tier, operators started and stopped per test: a release that
watches listed namespaces only (a Role in each), restarts, two replicas with kopf
peering, the chart's pool Secret name. Each test installs a release of its own and
checks that every line its operator processes wrote is one JSON object.

Runs after tests/test_operator_apiserver.py, whose cluster-wide operator must be gone
by then: these operators watch only their own namespaces.
"""

from __future__ import annotations

import asyncio
import signal
from collections.abc import AsyncIterator

import aiohttp
import pytest

from tests.harness import sample_value
from tests.kube_client import KubeClient, healthy_condition
from tests.operator_apiserver_env import ChartOperator, Cluster, Release, peering_crds, stopped_cleanly
from tests.polling import eventually

pytestmark = [pytest.mark.timeout(180)]
WAIT = 30.0


@pytest.fixture
async def admin(cluster: Cluster) -> AsyncIterator[KubeClient]:
    async with aiohttp.ClientSession() as http:
        yield cluster.admin(http)


def checks_of(cluster: Cluster, cookies: set[str]) -> int:
    return sum(1 for received in list(cluster.sim.received) if received.session in cookies)


async def stop_cleanly(process: ChartOperator) -> None:
    assert list(stopped_cleanly(process)) == [], f"operator log {process.log}"


async def test_apiserver_operator_limited_to_namespaces_with_roles_only(cluster: Cluster, admin: KubeClient) -> None:
    release = await cluster.install(admin, {"operator": {"watchNamespaces": ["scope-a", "scope-b"]}})
    assert not [d for d in release.documents if d["kind"] == "ClusterRole" and d["metadata"]["name"] == f"{release.name}-operator"]
    process = release.start_operator(cluster.sim_url)
    try:
        outside = await cluster.namespace(admin, "scope-outside")
        for ns in ("scope-a", "scope-b", "scope-outside"):
            kube = admin.in_namespace(ns)
            await kube.put_cookie_secret("cookie", f"session={ns}")
            await kube.add_credential("cred", "cookie")
        for ns in ("scope-a", "scope-b"):
            kube = admin.in_namespace(ns)
            await eventually(lambda kube=kube, ns=ns: kube.pool_is({f"{ns}/cred": f"session={ns}"}), WAIT)
            await eventually(lambda kube=kube: kube.condition_is("cred", "Ready", "True", "InPool"), WAIT)
            assert await eventually(lambda kube=kube: kube.events_with_reason("CheckPassed"), WAIT)
        # Not watched: untouched (no finalizer, no status, no pool), and never checked.
        body = await outside.credential("cred")
        assert "status" not in body and "finalizers" not in body["metadata"]
        assert await outside.secret("gptomni-credentials") is None
        assert checks_of(cluster, {"session=scope-outside"}) == 0
    finally:
        await stop_cleanly(process)


async def test_apiserver_restarts_rewrite_nothing_unchanged_and_lose_nothing(cluster: Cluster, admin: KubeClient) -> None:
    ns = "restart"
    release = await cluster.install(admin, {"operator": {"watchNamespaces": [ns]}})
    kube = admin.in_namespace(ns)
    first = release.start_operator(cluster.sim_url)
    await kube.put_cookie_secret("amy-cookie", "session=amy\n")  # `--from-file` keeps the newline
    await kube.put_cookie_secret("ben-cookie", "session=ben")
    await kube.add_credential("amy", "amy-cookie")
    await kube.add_credential("ben", "ben-cookie")
    await eventually(lambda: kube.pool_is({f"{ns}/amy": "session=amy", f"{ns}/ben": "session=ben"}), WAIT)
    for name in ("amy", "ben"):
        await eventually(lambda name=name: kube.condition_is(name, "Ready", "True"), WAIT)
    before = (await kube.secret("gptomni-credentials"))["metadata"]["resourceVersion"]
    checks = checks_of(cluster, {"session=amy", "session=ben"})
    await stop_cleanly(first)

    # Restarted with nothing changed: the pool is judged the same and not written; the
    # statuses say both cookies were checked moments ago, so none is checked again.
    second = release.start_operator(cluster.sim_url)
    async with aiohttp.ClientSession() as http:
        async def unchanged() -> bool:
            metrics = await second.metrics(http)
            return sample_value(metrics, "gptomni_operator_secret_writes_total", result="unchanged") >= 1

        await eventually(unchanged, WAIT)
        metrics = await second.metrics(http)
    assert sample_value(metrics, "gptomni_operator_secret_writes_total", result="updated") == 0
    assert sample_value(metrics, "gptomni_operator_secret_writes_total", result="created") == 0
    assert (await kube.secret("gptomni-credentials"))["metadata"]["resourceVersion"] == before
    # A new credential as a barrier: once it is published, the replayed Secrets were seen.
    await kube.add_cookie_credential("cal")
    await eventually(lambda: kube.pool_is({f"{ns}/amy": "session=amy", f"{ns}/ben": "session=ben",
                                           f"{ns}/cal": "session=cal"}), WAIT)
    assert checks_of(cluster, {"session=amy", "session=ben"}) == checks

    # Killed mid-work: a credential just created, then while it is down a cookie changes
    # and a credential is deleted (its finalizer holds it). The next operator catches up.
    await kube.add_cookie_credential("dee")
    second.stop(signal.SIGKILL)
    await kube.put_cookie_secret("amy-cookie", "session=amy-2")
    assert await kube.delete(f"{kube.credentials_path}/ben") == 200
    third = release.start_operator(cluster.sim_url)
    try:
        assert await eventually(lambda: kube.pool_is({f"{ns}/amy": "session=amy-2", f"{ns}/cal": "session=cal",
                                                      f"{ns}/dee": "session=dee"}), WAIT)
        assert await eventually(lambda: kube.gone("ben"), WAIT)
        for name in ("amy", "cal", "dee"):
            await eventually(lambda name=name: kube.condition_is(name, "Ready", "True", "InPool"), WAIT)
    finally:
        await stop_cleanly(third)
    assert second.not_json() == []


async def test_apiserver_two_peered_operators_only_one_active(cluster: Cluster, admin: KubeClient) -> None:
    ns = "peering"
    release = await cluster.install(admin, {"operator": {"watchNamespaces": [ns], "replicas": 2,
                                                         "peering": {"enabled": True, "name": "gptomni"}}})
    for crd in peering_crds():
        await cluster.crd(admin, crd)
    # Without its peering object kopf would idle silently: the operator says so and exits.
    lonely = release.start_operator(cluster.sim_url)
    assert await asyncio.to_thread(lonely.process.wait, WAIT) == 1
    assert _said(lonely, f"no KopfPeering gptomni in namespace {ns}") and lonely.not_json() == []
    await admin.apply({"apiVersion": "kopf.dev/v1", "kind": "KopfPeering",
                       "metadata": {"name": "gptomni", "namespace": ns}})
    kube = admin.in_namespace(ns)
    processes = [release.start_operator(cluster.sim_url) for _ in range(2)]
    try:
        # Both have announced themselves; the one with the lower priority then pauses.
        await eventually(lambda: _peers(admin, ns, 2), WAIT)
        await asyncio.sleep(1)
        await kube.add_cookie_credential("pia")
        await eventually(lambda: kube.pool_is({f"{ns}/pia": "session=pia"}), WAIT)
        async with aiohttp.ClientSession() as http:
            checks = [sample_value(await p.metrics(http), "gptomni_operator_checks_total") for p in processes]
        assert sorted(checks) == [0, 1]
        active, paused = (processes[0], processes[1]) if checks[0] else (processes[1], processes[0])

        # The active one leaves; the other takes over.
        await stop_cleanly(active)
        await eventually(lambda: _said(paused, "Resuming operations"), WAIT)
        await kube.add_cookie_credential("quy")
        assert await eventually(lambda: kube.pool_is({f"{ns}/pia": "session=pia", f"{ns}/quy": "session=quy"}), WAIT)
    finally:
        for process in processes:
            await stop_cleanly(process)


async def _peers(admin: KubeClient, namespace: str, count: int) -> bool:
    _, body = await admin.request("GET", f"/apis/kopf.dev/v1/namespaces/{namespace}/kopfpeerings/gptomni")
    return len((body or {}).get("status") or {}) == count


def _said(process: ChartOperator, text: str) -> bool:
    return any(text in message for message in process.messages())


async def test_apiserver_the_charts_pool_secret_name_is_the_default_target(cluster: Cluster, admin: KubeClient) -> None:
    ns = "renamed-pool"
    release: Release = await cluster.install(admin, {"poolSecret": {"name": "team-pool"},
                                                     "operator": {"watchNamespaces": [ns]}})
    kube = admin.in_namespace(ns)
    process = release.start_operator(cluster.sim_url)
    try:
        await kube.add_cookie_credential("rex")
        await eventually(lambda: kube.pool_is({f"{ns}/rex": "session=rex"}, "team-pool"), WAIT)
        body = await eventually(lambda: kube.condition_is("rex", "Ready", "True"), WAIT)
        assert body["status"]["targetSecret"] == "team-pool" and healthy_condition(body)["status"] == "True"
        assert await kube.secret("gptomni-credentials") is None
    finally:
        await stop_cleanly(process)


