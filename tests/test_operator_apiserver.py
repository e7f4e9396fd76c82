"""The real-API-server tier, cluster-wide: one `gptomni-operator` process installed as the
chart installs it by default (ClusterRole), shared by this module's tests; each test
works in a namespace of its own. What kmock cannot show: RBAC, /status, generations,
409 Conflicts, schema defaults and validation, finalizers, Events, printer columns.

Tiers: tests/test_operator_kmock.py (fast, in-memory API); this module; and
tests/test_operator_apiserver_lifecycle.py (operators started and stopped per test).
"""

from __future__ import annotations

import asyncio
import base64
import itertools
from collections.abc import AsyncIterator, Iterator
from typing import Any

import aiohttp
import httpx
import pytest

from gptomni_operator.cookies import cookie_digest
from tests.harness import sample_value, write_raw_pool_file
from tests.kube_client import MERGE_PATCH, TABLE, KubeClient, condition_of, healthy_condition
from tests.operator_apiserver_env import ChartOperator, Cluster, Release, default_install, own_namespace
from tests.polling import eventually
from tests.processes import free_port, relay_process

pytestmark = [pytest.mark.timeout(120)]
WAIT = 30.0  # seconds any one expected change may take
_NAMESPACES = itertools.count()


@pytest.fixture(scope="module")
def shared(cluster: Cluster) -> Iterator[tuple[Release, ChartOperator]]:
    """The chart's defaults (all namespaces, ClusterRole), one operator process."""
    yield from default_install(cluster)


@pytest.fixture
async def kube(cluster: Cluster, shared: tuple[Release, ChartOperator], request: pytest.FixtureRequest
               ) -> AsyncIterator[KubeClient]:
    """The admin, in a namespace of this test's own."""
    async with aiohttp.ClientSession() as http:
        yield await own_namespace(cluster, http, request.node.name, "c", _NAMESPACES)


async def operator_metrics(kube: KubeClient, shared: tuple[Release, ChartOperator]) -> str:
    return await shared[1].metrics(kube.http)


async def test_apiserver_credential_is_checked_and_published(kube: KubeClient) -> None:
    ns = kube.namespace
    await kube.put_cookie_secret("alice-cookie", "session=alice\n")  # as `--from-file` stores a file
    created = await kube.add_credential("alice", "alice-cookie")
    # The server applied the CRD's defaults; none for targetSecret, so the operator's applies.
    assert created["spec"] == {"cookieSecretRef": {"name": "alice-cookie", "key": "cookie"}, "weight": 1,
                               "maxConcurrency": 8, "suspend": False,
                               "healthCheck": {"interval": "5m", "timeout": "30s", "disabled": False}}

    assert await eventually(lambda: kube.pool_is({f"{ns}/alice": "session=alice"}), WAIT)
    body = await eventually(lambda: kube.condition_is("alice", "Ready", "True", "InPool"), WAIT)
    status = body["status"]
    assert healthy_condition(body)["reason"] == "CheckPassed"
    assert status["targetSecret"] == "gptomni-credentials" and status["observedGeneration"] == 1
    assert status["cookieDigest"] == cookie_digest("session=alice")
    assert body["metadata"]["finalizers"] == ["gptomni.io/pool-cleanup"]
    assert "session=alice" not in str(body)

    [event] = await eventually(lambda: kube.events_with_reason("CheckPassed"), WAIT)
    assert event["type"] == "Normal"
    assert {k: event["involvedObject"][k] for k in ("kind", "name", "uid")} == {
        "kind": "GPTOmniCredential", "name": "alice", "uid": body["metadata"]["uid"]}


async def test_apiserver_printer_columns_in_the_servers_table(kube: KubeClient) -> None:
    """What `kubectl get gptomnicredentials` (and `-o wide`) prints, from the server's Table."""
    await kube.add_cookie_credential("bea", targetSecret="pool-bea")
    await eventually(lambda: kube.condition_is("bea", "Ready", "True"), WAIT)
    status, table = await kube.request("GET", kube.credentials_path, accept=TABLE)
    assert status == 200 and table["kind"] == "Table"
    columns = [(c["name"], c.get("priority", 0)) for c in table["columnDefinitions"]]
    assert columns == [("Name", 0), ("Healthy", 0), ("Reason", 0), ("Last check", 0), ("Latency", 0), ("Age", 0),
                       ("Target", 1), ("In pool", 1)]
    [row] = table["rows"]
    name, healthy, reason, _, latency, _, target, in_pool = row["cells"]
    assert (name, healthy, reason, target, in_pool) == ("bea", "True", "CheckPassed", "pool-bea", "True")
    assert isinstance(latency, int) and latency >= 0


@pytest.mark.parametrize("spec, field", [
    ({"weight": 0}, "spec.weight"),
    ({"maxConcurrency": 0}, "spec.maxConcurrency"),
    ({"targetSecret": "Not_A_Secret_Name"}, "spec.targetSecret"),
    ({"healthCheck": {"interval": "five minutes"}}, "spec.healthCheck.interval"),
    ({"cookieSecretRef": {"key": "cookie"}}, "spec.cookieSecretRef.name"),
    ({"maxConcurrency": "many"}, "spec.maxConcurrency"),
    ({"suspend": "yes"}, "spec.suspend"),
])
async def test_apiserver_the_server_refuses_specs_the_schema_forbids(kube: KubeClient, spec: dict[str, Any],
                                                                     field: str) -> None:
    status, answer = await kube.create_credential("bad", "some-cookie", **spec)
    assert status == 422, answer
    assert field in answer["message"]


async def test_apiserver_unknown_fields_are_pruned_and_status_only_moves_through_its_subresource(
        kube: KubeClient) -> None:
    await kube.put_cookie_secret("cid-cookie", "session=cid")
    created = await kube.add_credential("cid", "cid-cookie", colour="blue")
    assert "colour" not in created["spec"]
    await eventually(lambda: kube.condition_is("cid", "Ready", "True"), WAIT)
    # Writing status through the main resource is ignored by the server: the operator must
    # (and does) use /status, and /status leaves the spec and generation alone.
    body = await kube.ok("PATCH", f"{kube.credentials_path}/cid", {"status": {"consecutiveFailures": 99}}, MERGE_PATCH)
    assert body["status"]["consecutiveFailures"] == 0 and body["metadata"]["generation"] == 1
    body = await kube.ok("PATCH", f"{kube.credentials_path}/cid/status", {"spec": {"weight": 7}}, MERGE_PATCH)
    assert body["spec"]["weight"] == 1 and body["metadata"]["generation"] == 1


async def test_apiserver_rapid_spec_edits_end_observed(kube: KubeClient, shared: tuple[Release, ChartOperator]
                                                       ) -> None:
    ns = kube.namespace
    await kube.add_cookie_credential("dot")
    await eventually(lambda: kube.condition_is("dot", "Ready", "True"), WAIT)
    for weight in range(2, 12):  # ten edits, as fast as the server takes them
        await kube.patch_credential("dot", {"weight": weight})

    async def settled() -> dict[str, Any] | None:
        body = await kube.credential("dot")
        generation = body["metadata"]["generation"]
        ready, healthy = condition_of(body, "Ready") or {}, condition_of(body, "Healthy") or {}
        if (body["status"].get("observedGeneration") == generation == healthy.get("observedGeneration")
                == ready.get("observedGeneration")):
            return body
        return None

    body = await eventually(settled, WAIT)
    assert body["metadata"]["generation"] == 11 and body["spec"]["weight"] == 11
    pool = await eventually(lambda: _pool_with_weight(kube, f"{ns}/dot", 11), WAIT)
    assert pool["document"]["credentials"][0]["cookie"] == "session=dot"


async def _pool_with_weight(kube: KubeClient, member: str, weight: int) -> dict[str, Any] | None:
    pool = await kube.pool()
    entries = {e["id"]: e for e in (pool or {}).get("document", {}).get("credentials", [])}
    return pool if member in entries and entries[member]["weight"] == weight else None


async def _hammer(stop: asyncio.Event, kube: KubeClient, path: str, field: str) -> int:
    """Edit `path`'s metadata as fast as the server allows until `stop`; returns the edits made."""
    edits = 0
    while not stop.is_set():
        edits += 1
        await kube.ok("PATCH", path, {"metadata": {field: {"gptomni.test/hammer": str(edits)}}}, MERGE_PATCH)
    return edits


async def _edit_under_contention(kube: KubeClient, shared: tuple[Release, ChartOperator], credential: str,
                                 resource: str, hammered: str, field: str) -> tuple[int, set[str]]:
    """Three editors change `hammered`'s metadata `field` as fast as they can while the
    credential's weight is edited, each edit making the operator write; this goes on
    until the operator reports a 409 Conflict on `resource`. Returns the last weight and
    the values the editors wrote."""
    before = sample_value(await operator_metrics(kube, shared), "gptomni_operator_conflicts_total", resource=resource)
    stop = asyncio.Event()
    hammers = [asyncio.create_task(_hammer(stop, kube, hammered, field)) for _ in range(3)]
    weight = 1
    try:
        async def conflicted() -> bool:
            nonlocal weight
            weight += 1
            await kube.patch_credential(credential, {"weight": weight})
            await asyncio.sleep(0.3)
            metrics = await operator_metrics(kube, shared)
            return sample_value(metrics, "gptomni_operator_conflicts_total", resource=resource) > before

        await eventually(conflicted, 60)
    finally:
        stop.set()
        edits = await asyncio.gather(*hammers)
    return weight, {str(count) for count in edits}


async def test_apiserver_conflicting_edits_of_a_credential_are_retried_and_nothing_is_lost(
        kube: KubeClient, shared: tuple[Release, ChartOperator]) -> None:
    ns = kube.namespace
    await kube.add_cookie_credential("eve")
    await eventually(lambda: kube.condition_is("eve", "Ready", "True"), WAIT)
    weight, written = await _edit_under_contention(kube, shared, "eve", "credential", f"{kube.credentials_path}/eve",
                                                   "labels")
    body = await eventually(lambda: _observed(kube, "eve"), WAIT)
    assert body["spec"]["weight"] == weight
    assert body["metadata"]["labels"]["gptomni.test/hammer"] in written
    assert await eventually(lambda: _pool_with_weight(kube, f"{ns}/eve", weight), WAIT)
    assert healthy_condition(body)["status"] == "True" and condition_of(body, "Ready")["status"] == "True"


async def _observed(kube: KubeClient, name: str) -> dict[str, Any] | None:
    body = await kube.credential(name)
    ready = condition_of(body, "Ready") or {}
    generation = body["metadata"]["generation"]
    return body if body["status"].get("observedGeneration") == generation == ready.get("observedGeneration") else None


async def test_apiserver_conflicting_edits_of_the_pool_secret_are_retried_and_nothing_is_lost(
        kube: KubeClient, shared: tuple[Release, ChartOperator]) -> None:
    ns = kube.namespace
    await kube.add_cookie_credential("fin")
    await eventually(lambda: kube.pool_is({f"{ns}/fin": "session=fin"}), WAIT)
    weight, written = await _edit_under_contention(kube, shared, "fin", "secret",
                                                   f"{kube.secrets_path}/gptomni-credentials", "annotations")
    pool = await eventually(lambda: _pool_with_weight(kube, f"{ns}/fin", weight), WAIT)
    # The other writers' edits survived the operator's writes, and the pool is whole.
    assert pool["secret"]["metadata"]["annotations"]["gptomni.test/hammer"] in written
    assert await kube.pool_is({f"{ns}/fin": "session=fin"})


async def test_apiserver_finalizer_removes_the_cookie_before_the_credential_goes(kube: KubeClient) -> None:
    ns = kube.namespace
    for name in ("gil", "hal"):
        await kube.add_cookie_credential(name)
    await eventually(lambda: kube.pool_is({f"{ns}/gil": "session=gil", f"{ns}/hal": "session=hal"}), WAIT)
    assert await kube.delete(f"{kube.credentials_path}/gil") == 200
    await eventually(lambda: kube.gone("gil"), WAIT)
    # Gone means the finalizer was released, which happens only once the pool is rewritten.
    assert await kube.pool_is({f"{ns}/hal": "session=hal"})


async def test_apiserver_cookie_secret_deleted_and_recreated(kube: KubeClient) -> None:
    ns = kube.namespace
    await kube.add_cookie_credential("ivy")
    await eventually(lambda: kube.pool_is({f"{ns}/ivy": "session=ivy"}), WAIT)
    await kube.delete(f"{kube.secrets_path}/ivy-cookie")
    await eventually(lambda: kube.healthy("ivy", "False", "SecretNotFound"), WAIT)
    await eventually(lambda: kube.pool_is({}), WAIT)
    await kube.put_cookie_secret("ivy-cookie", "session=ivy")
    await eventually(lambda: kube.healthy("ivy", "True", "CheckPassed"), WAIT)
    assert await eventually(lambda: kube.pool_is({f"{ns}/ivy": "session=ivy"}), WAIT)


async def test_apiserver_a_foreign_secret_with_the_targets_name_is_left_untouched(kube: KubeClient) -> None:
    ns = kube.namespace
    await kube.put_cookie_secret("gptomni-credentials", "someone else's", key="credentials.json")
    foreign = await kube.secret("gptomni-credentials")
    await kube.add_cookie_credential("jan")
    body = await eventually(lambda: kube.condition_is("jan", "Ready", "False", "TargetSecretConflict"), WAIT)
    assert healthy_condition(body)["status"] == "True"
    assert (await kube.secret("gptomni-credentials"))["metadata"]["resourceVersion"] == foreign["metadata"]["resourceVersion"]
    await kube.delete(f"{kube.secrets_path}/gptomni-credentials")
    assert await eventually(lambda: kube.pool_is({f"{ns}/jan": "session=jan"}), WAIT)


async def test_apiserver_rejected_cookie_is_a_warning_event_and_leaves_the_pool(kube: KubeClient,
                                                                                cluster: Cluster) -> None:
    ns = kube.namespace
    await kube.add_cookie_credential("kit")
    await eventually(lambda: kube.pool_is({f"{ns}/kit": "session=kit"}), WAIT)
    cluster.sim.set("session=kit-revoked", status=401)
    await kube.put_cookie_secret("kit-cookie", "session=kit-revoked")
    await eventually(lambda: kube.healthy("kit", "False", "CookieRejected"), WAIT)
    await eventually(lambda: kube.pool_is({}), WAIT)
    [event] = await eventually(lambda: kube.events_with_reason("CookieRejected"), WAIT)
    assert event["type"] == "Warning" and event["involvedObject"]["name"] == "kit"
    assert "session=kit" not in str(await kube.events())


async def test_apiserver_end_to_end_pool_secret_projected_into_a_running_relay(
        kube: KubeClient, cluster: Cluster, tmp_path: Any) -> None:
    """Operator-written Secret -> a directory as kubelet projects it -> a relay process serving with it."""
    ns = kube.namespace
    pool_dir = tmp_path / "pool"
    write_raw_pool_file(pool_dir, b'{"version": 1, "credentials": []}')

    async def project() -> None:
        pool = await kube.pool()
        write_raw_pool_file(pool_dir, base64.b64decode(pool["secret"]["data"]["credentials.json"]))

    env = {"GPTOMNI_UPSTREAM_URL": cluster.sim_url, "GPTOMNI_API_KEYS": "sk-e2e",
           "GPTOMNI_CREDENTIALS_FILE": str(pool_dir / "credentials.json"), "GPTOMNI_CREDENTIALS_POLL_SECONDS": "0.1",
           "GPTOMNI_METRICS_PORT": str(free_port())}
    with relay_process(env=env) as relay:
        def chat(text: str) -> httpx.Response:
            return httpx.post(f"{relay.url}/v1/chat/completions", headers={"Authorization": "Bearer sk-e2e"},
                              json={"model": "gptomni", "messages": [{"role": "user", "content": text}]}, timeout=10)

        assert (await asyncio.to_thread(chat, "before")).status_code == 503  # the empty pool
        await kube.put_cookie_secret("web-cookie", "session=web-1")
        await kube.add_credential("web", "web-cookie")
        await eventually(lambda: kube.pool_is({f"{ns}/web": "session=web-1"}), WAIT)
        await project()
        await eventually(lambda: _served_with(cluster, chat, "first", "session=web-1"), WAIT)

        await kube.put_cookie_secret("web-cookie", "session=web-2")
        await eventually(lambda: kube.pool_is({f"{ns}/web": "session=web-2"}), WAIT)
        await project()
        await eventually(lambda: _served_with(cluster, chat, "second", "session=web-2"), WAIT)


async def _served_with(cluster: Cluster, chat: Any, prompt: str, cookie: str) -> bool:
    response = await asyncio.to_thread(chat, prompt)
    return response.status_code == 200 and any(
        r.session == cookie and r.prompt == prompt for r in list(cluster.sim.received))
