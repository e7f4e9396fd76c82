"""GPTOmniAPIKey on the real-API-server tier: one `gptomni-operator` process installed as
the chart installs it (ClusterRole, its RBAC only), each test in a namespace of its own.

What is checked as the API server holds it: the key Secret the operator creates (owned by
the key), the key-set Secret it publishes (salted hashes, never a key), the status
(conditions, fingerprint), printer columns, schema validation, and that a key leaves the
published set within seconds of being disabled, expiring or deleted; and, through a
relay process reading the key set as kubelet projects it, that a key works within seconds
of its creation and is refused within seconds of being disabled, expiring or deleted.
"""

from __future__ import annotations

import asyncio
import base64
import itertools
import json
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import httpx
import pytest

from gptomni_common.api_key_set import DEFAULT_KEY_SET_SECRET, key_fingerprint, key_hash
from tests.harness import write_data_link
from tests.kube_client import CRD_API, MERGE_PATCH, TABLE, KubeClient, condition_of
from tests.operator_apiserver_env import ChartOperator, Cluster, Release, default_install, own_namespace
from tests.polling import eventually
from tests.processes import free_port, relay_process

pytestmark = [pytest.mark.timeout(120)]
WAIT = 30.0  # seconds any one expected change may take
_NAMESPACES = itertools.count()


@pytest.fixture(scope="module")
def operator(cluster: Cluster) -> Iterator[tuple[Release, ChartOperator]]:
    """The chart's defaults (all namespaces, ClusterRole), one operator process."""
    yield from default_install(cluster)


@pytest.fixture
async def kube(cluster: Cluster, operator: tuple[Release, ChartOperator], request: pytest.FixtureRequest
               ) -> AsyncIterator[KubeClient]:
    """The admin, in a namespace of this test's own."""
    async with aiohttp.ClientSession() as http:
        yield await own_namespace(cluster, http, request.node.name, "k", _NAMESPACES)


def keys_path(kube: KubeClient) -> str:
    return f"{CRD_API}/namespaces/{kube.namespace}/gptomniapikeys"


async def create_key(kube: KubeClient, name: str, **spec: Any) -> tuple[int, Any]:
    body = {"apiVersion": "gptomni.io/v1alpha1", "kind": "GPTOmniAPIKey",
            "metadata": {"name": name, "namespace": kube.namespace},
            "spec": {"secretRef": {"name": f"{name}-key"}, **spec}}
    return await kube.request("POST", keys_path(kube), body)


async def add_key(kube: KubeClient, name: str, **spec: Any) -> dict[str, Any]:
    status, answer = await create_key(kube, name, **spec)
    assert status == 201, answer
    return answer


async def api_key(kube: KubeClient, name: str) -> dict[str, Any] | None:
    status, body = await kube.request("GET", f"{keys_path(kube)}/{name}")
    return body if status == 200 else None


async def key_in_secret(kube: KubeClient, secret: str, key: str = "api-key") -> str | None:
    body = await kube.secret(secret)
    encoded = ((body or {}).get("data") or {}).get(key)
    return None if encoded is None else base64.b64decode(encoded).decode()


async def key_set(kube: KubeClient) -> dict[str, Any] | None:
    body = await kube.secret(DEFAULT_KEY_SET_SECRET)
    encoded = ((body or {}).get("data") or {}).get("api-keys.json")
    return None if encoded is None else json.loads(base64.b64decode(encoded))


async def published_names(kube: KubeClient) -> set[str] | None:
    document = await key_set(kube)
    return None if document is None else {entry["name"] for entry in document["keys"]}


async def names_are(kube: KubeClient, expected: set[str]) -> bool:
    return await published_names(kube) == expected


async def key_condition(kube: KubeClient, name: str, kind: str, status: str, reason: str | None = None
                        ) -> dict[str, Any] | None:
    body = await api_key(kube, name)
    found = condition_of(body, kind)
    return body if found and found["status"] == status and (reason is None or found["reason"] == reason) else None


async def test_apiserver_a_key_without_a_secret_gets_one_and_only_its_hash_is_published(kube: KubeClient) -> None:
    created = await add_key(kube, "bob", models=["gptomni"],
                            limits={"requestsPerMinute": 60, "maxConcurrentStreams": 2, "tokensPerDay": 200000})
    assert created["spec"]["secretRef"] == {"name": "bob-key", "key": "api-key"} and created["spec"]["disabled"] is False
    key = await eventually(lambda: key_in_secret(kube, "bob-key"), WAIT)
    assert key.startswith("sk-gptomni-") and len(key) >= 40
    secret = await kube.secret("bob-key")
    [owner] = secret["metadata"]["ownerReferences"]
    assert (owner["kind"], owner["name"], owner["uid"]) == ("GPTOmniAPIKey", "bob", created["metadata"]["uid"])

    body = await eventually(lambda: key_condition(kube, "bob", "Ready", "True", "Published"), WAIT)
    assert body["status"]["fingerprint"] == key_fingerprint(key)
    assert body["status"]["keySetSecret"] == DEFAULT_KEY_SET_SECRET
    assert {c["type"]: c["status"] for c in body["status"]["conditions"]} == {
        "Ready": "True", "Disabled": "False", "Expired": "False", "SecretMissing": "False"}
    document = await eventually(lambda: key_set(kube), WAIT)
    [entry] = document["keys"]
    assert entry == {"name": "bob", "hash": key_hash(document["salt"], key), "fingerprint": key_fingerprint(key),
                     "models": ["gptomni"],
                     "limits": {"requestsPerMinute": 60, "maxConcurrentStreams": 2, "tokensPerDay": 200000}}
    # Never the key: not in the published Secret (raw or decoded), the status, or the events.
    published = await kube.secret(DEFAULT_KEY_SET_SECRET)
    assert key not in json.dumps(published) and key not in json.dumps(document)
    assert key not in json.dumps(body) and key not in json.dumps(await kube.events())

    status, table = await kube.request("GET", keys_path(kube), accept=TABLE)
    assert status == 200
    assert [(c["name"], c.get("priority", 0)) for c in table["columnDefinitions"]] == [
        ("Name", 0), ("Ready", 0), ("Reason", 0), ("Fingerprint", 0), ("Expires", 0), ("Age", 0),
        ("Secret", 1), ("RPM", 1), ("Streams", 1), ("Tokens/day", 1)]
    [row] = table["rows"]
    assert row["cells"][:4] == ["bob", "True", "Published", key_fingerprint(key)]
    assert row["cells"][6:] == ["bob-key", 60, 2, 200000]


async def test_apiserver_a_users_own_key_is_used_and_rotation_republishes(kube: KubeClient) -> None:
    await kube.put_cookie_secret("own-key", "sk-my-own-key-of-sufficient-length-1\n", key="api-key")
    await add_key(kube, "own")
    await eventually(lambda: key_condition(kube, "own", "Ready", "True"), WAIT)
    document = await key_set(kube)
    assert document["keys"][0]["hash"] == key_hash(document["salt"], "sk-my-own-key-of-sufficient-length-1")

    await kube.put_cookie_secret("own-key", "sk-my-own-key-of-sufficient-length-2", key="api-key")

    async def rotated() -> bool:
        found = await key_set(kube)
        return found["keys"][0]["hash"] == key_hash(found["salt"], "sk-my-own-key-of-sufficient-length-2")

    await eventually(rotated, WAIT)
    body = await eventually(lambda: key_condition(kube, "own", "Ready", "True"), WAIT)
    assert body["status"]["fingerprint"] == key_fingerprint("sk-my-own-key-of-sufficient-length-2")

    # A guessable key is refused, not published; removing it has the operator write a random one.
    await kube.put_cookie_secret("own-key", "short", key="api-key")
    await eventually(lambda: key_condition(kube, "own", "SecretMissing", "True", "KeyInvalid"), WAIT)
    await eventually(lambda: names_are(kube, set()), WAIT)
    await kube.ok("PATCH", f"{kube.secrets_path}/own-key", {"data": {"api-key": None}}, MERGE_PATCH)
    await eventually(lambda: key_condition(kube, "own", "Ready", "True"), WAIT)
    generated = await key_in_secret(kube, "own-key")
    assert generated is not None and generated.startswith("sk-gptomni-")


@pytest.mark.parametrize("spec, field", [
    ({"limits": {"requestsPerMinute": 0}}, "spec.limits.requestsPerMinute"),
    ({"limits": {"tokensPerDay": "lots"}}, "spec.limits.tokensPerDay"),
    ({"expiresAt": "friday"}, "spec.expiresAt"),
    ({"secretRef": {"key": "api-key"}}, "spec.secretRef.name"),
    ({"disabled": "yes"}, "spec.disabled"),
])
async def test_apiserver_the_server_refuses_key_specs_the_schema_forbids(kube: KubeClient, spec: dict[str, Any],
                                                                         field: str) -> None:
    status, answer = await create_key(kube, "bad", **spec)
    assert status == 422, answer
    assert field in answer["message"]


async def test_apiserver_disabled_expired_and_deleted_keys_leave_the_published_set(kube: KubeClient) -> None:
    for name in ("ann", "cy", "dee"):
        await add_key(kube, name)
    await eventually(lambda: names_are(kube, {"ann", "cy", "dee"}), WAIT)
    ann = await key_in_secret(kube, "ann-key")

    await kube.ok("PATCH", f"{keys_path(kube)}/ann", {"spec": {"disabled": True}}, MERGE_PATCH)
    await eventually(lambda: names_are(kube, {"cy", "dee"}), WAIT)
    body = await eventually(lambda: key_condition(kube, "ann", "Ready", "False", "Disabled"), WAIT)
    assert condition_of(body, "Disabled")["status"] == "True"
    assert body["status"]["fingerprint"] == key_fingerprint(ann)

    soon = (datetime.now(UTC) + timedelta(seconds=8)).strftime("%Y-%m-%dT%H:%M:%SZ")
    await kube.ok("PATCH", f"{keys_path(kube)}/cy", {"spec": {"expiresAt": soon}}, MERGE_PATCH)
    async def published_with_expiry() -> bool:
        document = await key_set(kube)
        return any(entry["name"] == "cy" and "expiresAt" in entry for entry in document["keys"])

    # Published with its expiry (the relay refuses it from then on by itself), then dropped.
    await eventually(published_with_expiry, WAIT)
    await eventually(lambda: names_are(kube, {"dee"}), WAIT)
    await eventually(lambda: key_condition(kube, "cy", "Expired", "True"), WAIT)
    await eventually(lambda: key_condition(kube, "cy", "Ready", "False", "Expired"), WAIT)

    assert await kube.delete(f"{keys_path(kube)}/dee") == 200
    await eventually(lambda: names_are(kube, set()), WAIT)

    await kube.ok("PATCH", f"{keys_path(kube)}/ann", {"spec": {"disabled": False}}, MERGE_PATCH)
    await eventually(lambda: names_are(kube, {"ann"}), WAIT)


def project(directory: Path, raw: bytes) -> None:
    """The key-set Secret's file as kubelet projects it (an atomic `..data` swap)."""
    directory.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(UTC).strftime("..%Y_%m_%d_%H_%M_%S.%f")
    (directory / stamp).mkdir()
    (directory / stamp / "api-keys.json").write_bytes(raw)
    write_data_link(directory, stamp, "api-keys.json")


async def test_apiserver_a_relay_accepts_a_new_key_and_refuses_it_once_disabled_expired_or_deleted(
        kube: KubeClient, cluster: Cluster, tmp_path: Path) -> None:
    """GPTOmniAPIKey -> key-set Secret -> a directory as kubelet projects it -> a relay process."""
    key_dir = tmp_path / "keys"
    project(key_dir, b'{"version": 1, "salt": "00000000000000000000000000000000", "keys": []}')
    env = {"GPTOMNI_UPSTREAM_URL": cluster.sim_url, "GPTOMNI_API_KEYS": "static:sk-static-key-for-the-pool-only",
           "GPTOMNI_API_KEY_SET_FILE": str(key_dir / "api-keys.json"), "GPTOMNI_CREDENTIALS": '["session=keys"]',
           "GPTOMNI_CREDENTIALS_POLL_SECONDS": "0.1", "GPTOMNI_METRICS_PORT": str(free_port())}

    async def follow() -> None:  # kubelet's part: the Secret's current content into the directory
        seen = None
        while True:
            body = await kube.secret(DEFAULT_KEY_SET_SECRET)
            raw = base64.b64decode(((body or {}).get("data") or {}).get("api-keys.json", ""))
            if raw and raw != seen:
                project(key_dir, raw)
                seen = raw
            await asyncio.sleep(0.2)

    with relay_process(env=env) as relay:
        def status_with(key: str) -> int:
            return httpx.post(f"{relay.url}/v1/chat/completions", headers={"Authorization": f"Bearer {key}"},
                              json={"model": "gptomni", "messages": [{"role": "user", "content": "hi"}]},
                              timeout=10).status_code

        async def answered(key: str, status: int) -> bool:
            return await asyncio.to_thread(status_with, key) == status

        kubelet = asyncio.create_task(follow())
        try:
            await add_key(kube, "ann")
            await add_key(kube, "cy")
            await add_key(kube, "dee")
            ann, cy, dee = [await eventually(lambda n=n: key_in_secret(kube, f"{n}-key"), WAIT) for n in ("ann", "cy", "dee")]
            for key in (ann, cy, dee):
                await eventually(lambda key=key: answered(key, 200), WAIT)

            await kube.ok("PATCH", f"{keys_path(kube)}/ann", {"spec": {"disabled": True}}, MERGE_PATCH)
            await eventually(lambda: answered(ann, 401), WAIT)
            await eventually(lambda: key_condition(kube, "ann", "Disabled", "True"), WAIT)
            body = await eventually(lambda: key_condition(kube, "ann", "Ready", "False", "Disabled"), WAIT)
            assert body["status"]["fingerprint"] == key_fingerprint(ann)

            soon = (datetime.now(UTC) + timedelta(seconds=8)).strftime("%Y-%m-%dT%H:%M:%SZ")
            await kube.ok("PATCH", f"{keys_path(kube)}/cy", {"spec": {"expiresAt": soon}}, MERGE_PATCH)
            await eventually(lambda: answered(cy, 401), WAIT)
            await eventually(lambda: key_condition(kube, "cy", "Expired", "True"), WAIT)
            await eventually(lambda: names_are(kube, {"dee"}), WAIT)

            assert await kube.delete(f"{keys_path(kube)}/dee") == 200
            await eventually(lambda: answered(dee, 401), WAIT)
            await eventually(lambda: names_are(kube, set()), WAIT)
            # The refusals say nothing about whether a key exists.
            refusal = await asyncio.to_thread(
                httpx.post, f"{relay.url}/v1/chat/completions", headers={"Authorization": f"Bearer {ann}"},
                json={"model": "gptomni", "messages": [{"role": "user", "content": "hi"}]}, timeout=10)
            unknown = await asyncio.to_thread(
                httpx.post, f"{relay.url}/v1/chat/completions", headers={"Authorization": "Bearer sk-never-was-a-key"},
                json={"model": "gptomni", "messages": [{"role": "user", "content": "hi"}]}, timeout=10)
            assert refusal.json() == unknown.json()
            assert await asyncio.to_thread(status_with, "sk-static-key-for-the-pool-only") == 200
        finally:
            kubelet.cancel()
        for key in (ann, cy, dee):
            assert key not in Path(relay.log.name).read_text()
