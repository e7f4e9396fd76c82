"""The cluster tier: the whole system as users run it, in a real single-node Kubernetes.

`helm install` (Helm's library) of the chart with the project's image; a cookie Secret and
a GPTOmniCredential applied with kubectl; the operator in its pod (its ServiceAccount, the
chart's RBAC) checks the cookie against the fake GPT-Omni and writes the pool Secret; the
kubelet updates the relays' mounted file; the openai SDK streams through the relay's
Service. Then rollouts under load, pod deletion with streams in flight, and the limits.
The tests of this file share one release and run in order.
"""

from __future__ import annotations

import asyncio
import functools
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from gptomni_relay.simulator import Behaviour, default_answer
from tests.cluster_env import (
    POD_START_TIMEOUT,
    RELEASE,
    Release,
    StreamTally,
    Upstream,
    base_values,
    cookie_and_credential,
    one_stream,
    streams_until,
    upstream_on_node,
    upstream_service,
)
from tests.container_engine import find_podman
from tests.polling import eventually, wait_until
from tests.real_cluster import SETTLING, Cluster, import_image

# The first test starts the cluster, builds and imports the image and installs the chart.
pytestmark = [pytest.mark.cluster, pytest.mark.timeout(900)]

NAMESPACE = "gptomni-e2e"
COOKIE = "session=cluster-tier-alice"
ANSWER_WORDS = 30
EXPECTED = default_answer("", ANSWER_WORDS)
# Measured in this run, reported by the tests (docs/deploy.md quotes them).
timings: dict[str, float] = {}


@pytest.fixture(scope="module")
def upstream() -> Iterator[Upstream]:
    with upstream_on_node() as running:
        # Every answer streams ANSWER_WORDS pieces 50 ms apart: ~1.5 s, long enough to be in flight.
        running.sim.default = Behaviour(answer_words=ANSWER_WORDS, token_delay=0.05)
        yield running


@pytest.fixture(scope="module")
def release(real_cluster: Cluster, upstream: Upstream) -> Iterator[Release]:
    tag = import_image(find_podman())
    real_cluster.kubectl("create", "namespace", NAMESPACE)
    real_cluster.apply(*upstream_service(NAMESPACE, upstream.port))
    installed = Release(real_cluster, NAMESPACE, base_values(tag, upstream.port, NAMESPACE))
    started = time.monotonic()
    installed.install()
    installed.wait_rolled_out(f"{RELEASE}-operator")
    timings["install to operator ready"] = time.monotonic() - started
    yield installed
    print("\ncluster tier timings (s):", {name: round(value, 1) for name, value in timings.items()})


def run(coroutine: Any) -> Any:
    return asyncio.run(coroutine)


def test_credential_to_first_answer_through_the_service(release: Release, upstream: Upstream) -> None:
    assert len(release.relay_pods()) == 2 and not release.ready_relays(), "relays are unready until the pool exists"
    applied = time.monotonic()
    release.cluster.apply(*cookie_and_credential(NAMESPACE, "alice", COOKIE, max_concurrency=200))

    wait_until(lambda: release.healthy("alice"), POD_START_TIMEOUT, 0.5, "credential Healthy", SETTLING)
    timings["apply to Healthy"] = time.monotonic() - applied
    pool = wait_until(release.pool, 60, 0.5, "pool Secret with the cookie", SETTLING)
    assert [entry["cookie"] for entry in pool["credentials"]] == [COOKIE]
    timings["apply to pool Secret"] = time.monotonic() - applied
    assert any(chat.session == "session=cluster-tier-alice" for chat in upstream.sim.received), "the operator checked it"

    wait_until(lambda: len(release.ready_relays()) == 2, POD_START_TIMEOUT, 0.5, "both relays Ready", SETTLING)
    timings["apply to relays Ready (kubelet volume update)"] = time.monotonic() - applied

    async def first_answers() -> tuple[StreamTally, str]:
        client = release.client()
        async with client:
            tally = StreamTally()
            # kube-proxy programs the endpoints a moment after Ready: the first try may be refused.
            while time.monotonic() - applied < POD_START_TIMEOUT:
                await one_stream(client, EXPECTED, tally)
                if tally.completed:
                    break
                await asyncio.sleep(0.5)
            timings["apply to first streamed answer"] = time.monotonic() - applied
            plain = await client.chat.completions.create(
                model="gptomni", messages=[{"role": "user", "content": "hello"}])
            return tally, plain.choices[0].message.content or ""

    tally, plain = run(first_answers())
    assert tally.completed == 1, tally.examples
    assert plain == EXPECTED
    # Both replicas serve: the Service spreads new connections over them.
    sessions_before = len(upstream.sim.received)
    assert sessions_before >= 3


def test_rolling_update_under_load_drops_nothing(release: Release, upstream: Upstream) -> None:
    """`helm upgrade` changing the relay pods while 50 streams run through the Service."""
    old_pods = {pod["metadata"]["name"] for pod in release.relay_pods()}
    values = release.values
    values["relay"]["podAnnotations"] = {"example.com/rollout": "2"}

    async def under_load() -> tuple[StreamTally, float]:
        tally, stop = StreamTally(), asyncio.Event()
        # As users run it: with the SDK's default retries (see docs/deploy.md for why and how often).
        client = release.client(max_retries=2)
        async with client:
            load = asyncio.create_task(streams_until(client, EXPECTED, 50, stop, tally, time.monotonic() + 600))
            await asyncio.sleep(3)  # the load is running before the rollout starts
            started = time.monotonic()
            await asyncio.to_thread(release.upgrade, values)
            rollout = time.monotonic() - started
            await asyncio.sleep(3)  # and after it: new pods serve
            stop.set()
            await load
        return tally, rollout

    tally, rollout = run(under_load())
    timings["helm upgrade --wait of the relays under 50 streams"] = rollout
    new_pods = set(release.ready_relays())
    assert new_pods and not new_pods & old_pods, "every relay pod was replaced"
    assert not tally.failures, f"{dict(tally.failures)} of {tally.completed} streams: {tally.examples}"
    assert tally.completed >= 100


def test_deleted_pod_drains_its_streams(release: Release, upstream: Upstream) -> None:
    """`kubectl delete pod` with streams in flight: they finish within the grace period."""
    upstream.sim.default = Behaviour(answer_words=ANSWER_WORDS, token_delay=0.3)  # ~9 s per answer
    expected = default_answer("", ANSWER_WORDS)
    [victim, *_] = release.ready_relays()

    async def delete_mid_stream() -> StreamTally:
        tally = StreamTally()
        client = release.client()
        async with client:
            streams = [asyncio.create_task(one_stream(client, expected, tally)) for _ in range(20)]
            await eventually(lambda: upstream.sim.active >= 20, 60, 0.1, "streams in flight")
            deleted = time.monotonic()
            await asyncio.to_thread(release.cluster.kubectl, "delete", "pod", victim, f"--namespace={NAMESPACE}",
                                    "--wait=false")
            await asyncio.gather(*streams)
            timings["delete pod: in-flight streams finished after"] = time.monotonic() - deleted
            # A new stream during the drain goes to a pod still serving.
            upstream.sim.default = Behaviour(answer_words=ANSWER_WORDS, token_delay=0.01)
            await one_stream(client, expected, tally)
        return tally

    try:
        tally = run(delete_mid_stream())
    finally:
        upstream.sim.default = Behaviour(answer_words=ANSWER_WORDS, token_delay=0.05)
    assert not tally.failures, f"{dict(tally.failures)}: {tally.examples}"
    assert tally.completed == 21
    wait_until(lambda: victim not in {p["metadata"]["name"] for p in release.relay_pods()}, 120, 0.5,
               "the deleted pod gone", SETTLING)
    wait_until(lambda: len(release.ready_relays()) == 2, POD_START_TIMEOUT, 0.5, "two relays Ready again", SETTLING)


def pool_cookies(release: Release) -> list[str]:
    pool = release.pool()
    return [entry["cookie"] for entry in pool["credentials"]] if pool else []


def test_a_cookies_limit_holds_with_the_chart_defaults(release: Release, upstream: Upstream) -> None:
    """Two relay replicas, no Redis (the chart's defaults): a cookie never runs more than its
    maxConcurrency at the fake GPT-Omni, under more load than that, and while the replica
    count changes (helm upgrade relay.replicas 2 -> 3, which rolls every pod)."""
    limit, bob = 6, "session=cluster-tier-bob"
    release.cluster.kubectl("delete", "gptomnicredential", "alice", f"--namespace={NAMESPACE}")
    release.cluster.apply(*cookie_and_credential(NAMESPACE, "bob", bob, max_concurrency=limit))
    wait_until(lambda: pool_cookies(release) == [bob], 120, 0.5, "only bob in the pool", SETTLING)

    async def overload(rollout: dict[str, Any] | None) -> StreamTally:
        tally, stop = StreamTally(), asyncio.Event()
        client = release.client(max_retries=2)  # as users run it (docs/deploy.md: keep-alive and rollouts)
        async with client:
            load = asyncio.create_task(streams_until(client, EXPECTED, 4 * limit, stop, tally,
                                                     time.monotonic() + 600))
            if rollout is not None:
                await asyncio.to_thread(release.upgrade, rollout)
                await asyncio.sleep(3)
            else:
                await asyncio.sleep(15)
            stop.set()
            await load
        return tally

    async def until_both_relays_use_bob() -> None:
        """The kubelet updates each pod's volume on its own sync: wait until no relay answers
        with alice's cookie any more (one stream per pod at a time, a bounded number of tries)."""
        client = release.client()
        async with client:
            for _ in range(200):
                before = len(upstream.sim.received)
                await asyncio.gather(*(one_stream(client, EXPECTED, StreamTally()) for _ in range(4)))
                if all(chat.session == bob for chat in list(upstream.sim.received)[before:]):
                    return
                await asyncio.sleep(1)
            raise TimeoutError("the relays still use alice's cookie")

    run(until_both_relays_use_bob())
    upstream.sim.peak_by_session.clear()
    steady = run(overload(None))
    assert steady.completed >= limit, f"the cookie served ({steady.completed}; {dict(steady.failures)})"
    assert set(steady.failures) <= {"RateLimitError"}, steady.examples  # over the limit: 429, nothing else
    assert 2 <= upstream.sim.peak_by_session[bob] <= limit
    timings["steady: peak streams on a cookie of limit 6"] = upstream.sim.peak_by_session[bob]

    values = release.values
    values["relay"]["replicas"] = 3
    scaled = run(overload(values))
    assert set(scaled.failures) <= {"RateLimitError"}, scaled.examples
    assert upstream.sim.peak_by_session[bob] <= limit, f"peak {upstream.sim.peak_by_session[bob]} > {limit}"
    assert len(release.ready_relays()) == 3
    timings["scaling 2 -> 3: peak streams on a cookie of limit 6"] = upstream.sim.peak_by_session[bob]


def relay_deployment(release: Release) -> dict[str, Any]:
    deployment = release.cluster.get("deployment", f"{RELEASE}-relay", release.namespace)
    assert deployment is not None
    return deployment


def settled_at(release: Release, low: int, high: int) -> int | None:
    """The relay Deployment's replica count once it is within [low, high] and every pod of it
    is Ready and none is terminating (a pod still draining counts as not settled)."""
    deployment = relay_deployment(release)
    wanted = deployment["spec"].get("replicas", 1)
    pods = release.relay_pods()
    if not low <= wanted <= high or len(pods) != wanted or len(release.ready_relays()) != wanted:
        return None
    return int(wanted)


def test_a_cookies_limit_holds_while_the_hpa_scales(release: Release, upstream: Upstream) -> None:
    """The HPA on (no Redis): its controller changes the replica count under load and the
    cookie's limit still holds. There is no metrics-server here, so the HPA acts on its
    bounds (the same scale writes it makes for a CPU target): minReplicas raised to 3 scales
    up, then maxReplicas lowered to 2 scales down while the pods roll (the pods' share is
    computed from maxReplicas, so that change also replaces them)."""
    limit, bob = 6, "session=cluster-tier-bob"
    values = release.values
    values["relay"]["autoscaling"] = {"enabled": True, "minReplicas": 2, "maxReplicas": 3}
    release.upgrade(values)  # twice maxReplicas is twice the 3 replicas of before: no pod replaced
    hpa = release.cluster.get("horizontalpodautoscaler", f"{RELEASE}-relay", NAMESPACE)
    assert hpa is not None
    wait_until(lambda: settled_at(release, 2, 3), 2 * POD_START_TIMEOUT, 1, "the relays settled under the HPA", SETTLING)
    upstream.sim.peak_by_session.clear()
    counts: list[int] = []

    async def under_load() -> StreamTally:
        tally, stop = StreamTally(), asyncio.Event()
        client = release.client(max_retries=2)
        async with client:
            load = asyncio.create_task(streams_until(client, EXPECTED, 4 * limit, stop, tally,
                                                     time.monotonic() + 600))
            await asyncio.sleep(3)
            for low, high in ((3, 3), (2, 2)):
                values["relay"]["autoscaling"].update(minReplicas=low, maxReplicas=high)
                await asyncio.to_thread(release.upgrade, values)
                # The HPA controller syncs every 15 s; then the new pods start or the old drain.
                # In a thread: the probe runs kubectl, and the event loop carries the streams.
                counts.append(await asyncio.to_thread(
                    wait_until, functools.partial(settled_at, release, low, high), 2 * POD_START_TIMEOUT, 1,
                    f"the HPA at {low}", SETTLING))
            await asyncio.sleep(3)
            stop.set()
            await load
        return tally

    tally = run(under_load())
    assert counts == [3, 2]
    assert set(tally.failures) <= {"RateLimitError"}, tally.examples
    assert tally.completed >= limit, f"the cookie served ({tally.completed}; {dict(tally.failures)})"
    assert 1 <= upstream.sim.peak_by_session[bob] <= limit, f"peak {upstream.sim.peak_by_session[bob]} > {limit}"
    timings["HPA 2/3 -> 3 -> 2: peak streams on a cookie of limit 6"] = upstream.sim.peak_by_session[bob]


def test_the_operators_rollout_loses_and_doubles_no_pool_write(release: Release, upstream: Upstream) -> None:
    """`helm upgrade` that replaces the operator pod (Recreate) while a credential arrives:
    the new operator publishes it exactly once, and republishes nothing that did not change."""
    watch = release.cluster.watch("secret", "gptomni-credentials", NAMESPACE)
    try:
        carol = "session=cluster-tier-carol"
        values = release.values
        values["operator"] = {"env": {"GPTOMNI_OPERATOR_LOG_LEVEL": "DEBUG"}}
        with release.helm() as config:  # no wait: the credential arrives while the operator is replaced
            config.upgrade(release.chart, RELEASE, values, namespace=NAMESPACE, timeout=300)
        release.cluster.apply(*cookie_and_credential(NAMESPACE, "carol", carol, max_concurrency=4))
        release.wait_rolled_out(f"{RELEASE}-operator")
        wait_until(lambda: sorted(pool_cookies(release)) == sorted([carol, "session=cluster-tier-bob"]), 120, 0.5,
                   "carol published", SETTLING)
        time.sleep(5)  # anything more the new operator would write comes now
    finally:
        events = watch.stop()
    writes = [event for event in events if event["type"] == "MODIFIED"]
    assert len(writes) == 1, [event["object"]["metadata"]["resourceVersion"] for event in writes]


def printer_columns(cluster: Cluster) -> list[str]:
    crd = cluster.get("crd", "gptomnicredentials.gptomni.io")
    assert crd is not None
    [version] = crd["spec"]["versions"]
    return [column["name"] for column in version.get("additionalPrinterColumns", [])]


def test_a_changed_crd_is_applied_as_the_readme_says(release: Release, tmp_path: Path) -> None:
    """`helm upgrade` leaves a changed CRD as it was (Helm never upgrades crds/); the README's
    `kubectl apply --server-side --force-conflicts -f charts/gptomni/crds/` brings it in."""
    changed = tmp_path / "gptomni"
    shutil.copytree(release.chart, changed)
    path = changed / "crds" / "gptomnicredentials.yaml"
    crd = yaml.safe_load(path.read_text())
    crd["spec"]["versions"][0]["additionalPrinterColumns"].append(
        {"name": "Secret", "type": "string", "jsonPath": ".spec.cookieSecretRef.name"})
    path.write_text(yaml.safe_dump(crd, sort_keys=False))
    before = printer_columns(release.cluster)
    original, release.chart = release.chart, changed
    try:
        release.upgrade(release.values)
    finally:
        release.chart = original
    assert printer_columns(release.cluster) == before, "helm upgrade changed the CRD"
    release.cluster.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(changed / "crds"))
    assert printer_columns(release.cluster) == [*before, "Secret"]
    listed = release.cluster.kubectl("get", "gptomnicredential", "bob", f"--namespace={NAMESPACE}").stdout
    assert "SECRET" in listed.splitlines()[0], listed  # the API server serves the new column
    release.cluster.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(original / "crds"))
    assert printer_columns(release.cluster) == before


def test_rollback_then_uninstall_leaves_nothing_stuck(release: Release, upstream: Upstream) -> None:
    """`helm rollback` to the first revision serves again; `helm uninstall` runs the hook that
    releases the operator's finalizer, so credentials and their namespace delete afterwards."""
    with release.helm() as config:
        revisions = len(config.history(RELEASE))
        assert revisions >= 4
        config.rollback(RELEASE, version=1, wait="watcher", timeout=600)
        assert len(config.history(RELEASE)) == revisions + 1
    wait_until(lambda: len(release.ready_relays()) == 2, POD_START_TIMEOUT, 0.5, "two relays Ready after the rollback", SETTLING)

    async def answers() -> StreamTally:
        tally = StreamTally()
        async with release.client() as client:
            await asyncio.gather(*(one_stream(client, EXPECTED, tally) for _ in range(4)))
        return tally

    tally = run(answers())
    assert tally.completed == 4, tally.examples

    credentials = [item["metadata"]["name"] for item in release.cluster.items("gptomnicredentials", NAMESPACE)]
    assert credentials, "credentials exist while the release goes"
    with release.helm() as config:
        config.uninstall(RELEASE, wait="watcher", timeout=300)
    left = [item for item in release.cluster.items("gptomnicredentials", NAMESPACE)
            if "gptomni.io/pool-cleanup" in item["metadata"].get("finalizers", [])]
    assert not left, "the hook released every finalizer"
    started = time.monotonic()
    release.cluster.kubectl("delete", "namespace", NAMESPACE, "--timeout=180s", timeout=200)
    timings["namespace with credentials deleted after uninstall"] = time.monotonic() - started
    # The hook's own objects went with it; the CRD stays (Helm never deletes crds/).
    assert release.cluster.get("clusterrole", f"{RELEASE}-operator-uninstall-{NAMESPACE}") is None
    assert release.cluster.get("crd", "gptomnicredentials.gptomni.io") is not None
