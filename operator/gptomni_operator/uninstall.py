"""`gptomni-operator --release-finalizers`: run by the chart's post-delete hook, once
`helm uninstall` has removed the operator.

The operator's finalizer keeps a deleted GPTOmniCredential until the operator has taken its
cookie out of the pool. Once no operator is left to do that, a credential deleted later
(or its namespace) would hang forever. So, as the operator goes, its finalizer leaves every
credential it watches, after its last pod has stopped (a running kopf would put its
finalizer straight back); the credentials themselves stay (they are the user's, and the CRD
outlives the release), and the pool Secrets are of no use without the release's relays.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from kubernetes_asyncio import client
from kubernetes_asyncio.client.exceptions import ApiException

from gptomni_operator import FINALIZER, GROUP, PLURAL, VERSION
from gptomni_operator.kube import make_api_client

log = logging.getLogger("gptomni_operator.uninstall")


async def watched_credentials(custom: client.CustomObjectsApi, namespaces: list[str]) -> list[dict[str, Any]]:
    if not namespaces:
        listed = await custom.list_cluster_custom_object(GROUP, VERSION, PLURAL)
        return list(listed["items"])
    items: list[dict[str, Any]] = []
    for namespace in namespaces:
        items += (await custom.list_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL))["items"]
    return items


async def until_no_pods(core: client.CoreV1Api, namespace: str, selector: str, timeout: float) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while (await core.list_namespaced_pod(namespace, label_selector=selector)).items:
        if loop.time() > deadline:
            raise TimeoutError(f"operator pods ({selector}) still running after {timeout:.0f} s")
        await asyncio.sleep(1)


async def release_finalizers(namespaces: list[str], operator_pods: tuple[str, str] | None = None,
                             timeout: float = 120) -> int:
    """Take FINALIZER off every credential in `namespaces` (empty: all), once no pod matches
    `operator_pods` (namespace, label selector); the number released."""
    released = 0
    async with await make_api_client() as api:
        if operator_pods is not None:
            await until_no_pods(client.CoreV1Api(api), *operator_pods, timeout)
        custom = client.CustomObjectsApi(api)
        for item in await watched_credentials(custom, namespaces):
            metadata = item["metadata"]
            finalizers = metadata.get("finalizers") or []
            if FINALIZER not in finalizers:
                continue
            # A JSON patch that tests the list first: another writer's change is never lost.
            patch = [{"op": "test", "path": "/metadata/finalizers", "value": finalizers},
                     {"op": "replace", "path": "/metadata/finalizers", "value": [f for f in finalizers if f != FINALIZER]}]
            try:
                await custom.patch_namespaced_custom_object(GROUP, VERSION, metadata["namespace"], PLURAL,
                                                            metadata["name"], patch)
            except ApiException as exc:
                if exc.status != 404:  # already gone is released
                    raise
            released += 1
            log.info("finalizer released", extra={"credential": f"{metadata['namespace']}/{metadata['name']}"})
    return released
