"""The few Kubernetes API calls the operator makes beyond what kopf does for it.

Writes that rest on something read earlier carry that read's `resourceVersion`, so the
API server refuses them (409 Conflict) when another writer came in between; callers
read again and retry (see `conflicts`).
"""

from __future__ import annotations

import asyncio
import os
import random
from collections.abc import Awaitable, Callable
from typing import Any

from kubernetes_asyncio import client, config
from kubernetes_asyncio.client.exceptions import ApiException
from kubernetes_asyncio.config.config_exception import ConfigException

from gptomni_operator import GROUP, PLURAL, VERSION
from gptomni_operator.cookies import cookie_from_data
from gptomni_operator.metrics import OperatorMetrics
from gptomni_operator.spec import SecretKeyRef

CONFLICT_ATTEMPTS = 8


async def make_api_client() -> client.ApiClient:
    """In a pod: its ServiceAccount. Elsewhere: KUBECONFIG (or ~/.kube/config)."""
    try:
        config.load_incluster_config()
    except ConfigException:
        # Read KUBECONFIG now: the library's default was fixed when it was imported.
        await config.load_kube_config(config_file=os.environ.get("KUBECONFIG") or None)
    return client.ApiClient()


async def conflict_pause() -> None:
    """A moment, jittered, before trying again: two writers retrying in step would collide again."""
    await asyncio.sleep(random.uniform(0.01, 0.1))


class KubeApi:
    def __init__(self, api_client: client.ApiClient, metrics: OperatorMetrics) -> None:
        self.api_client = api_client
        self.core = client.CoreV1Api(api_client)
        self.custom = client.CustomObjectsApi(api_client)
        self.metrics = metrics

    async def close(self) -> None:
        await self.api_client.close()

    async def read_secret(self, namespace: str, name: str) -> client.V1Secret | None:
        try:
            return await self.core.read_namespaced_secret(name, namespace)
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise

    async def read_cookie(self, namespace: str, ref: SecretKeyRef) -> str:
        """The cookie, or CookieUnavailable saying why not."""
        secret = await self.read_secret(namespace, ref.name)
        return cookie_from_data(namespace, ref, None if secret is None else (secret.data or {}))

    async def read_credential(self, namespace: str, name: str, plural: str = PLURAL) -> dict[str, Any] | None:
        """A custom resource of ours (a GPTOmniCredential unless `plural` says otherwise)."""
        try:
            return await self.custom.get_namespaced_custom_object(GROUP, VERSION, namespace, plural, name)
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise

    async def update_status(
        self, namespace: str, name: str, resource_version: str, status: dict[str, Any],
        change: Callable[[dict[str, Any]], dict[str, Any] | None], plural: str = PLURAL,
    ) -> dict[str, Any] | None:
        """Merge `change(status)` into the credential's (or `plural`'s) status through /status.

        `change` gets the current status and returns the fields to write (None: nothing
        to do). On a conflict it is called again with the status read afresh. Returns
        what was written, None when nothing was (or the credential is gone).
        """
        for _ in range(CONFLICT_ATTEMPTS):
            fields = change(status)
            if fields is None:
                return None
            try:
                await self.custom.patch_namespaced_custom_object_status(
                    GROUP, VERSION, namespace, plural, name,
                    {"metadata": {"resourceVersion": resource_version}, "status": fields},
                    _content_type="application/merge-patch+json",
                )
                return fields
            except ApiException as exc:
                if exc.status == 404:
                    return None
                if exc.status != 409:
                    raise
            self.metrics.conflicts.labels("credential" if plural == PLURAL else "api_key").inc()
            await conflict_pause()
            fresh = await self.read_credential(namespace, name, plural)
            if fresh is None:
                return None
            resource_version, status = fresh["metadata"]["resourceVersion"], dict(fresh.get("status") or {})
        raise RuntimeError(f"credential {namespace}/{name}: status still conflicting after {CONFLICT_ATTEMPTS} attempts")

    async def missing_peerings(self, name: str, namespaces: list[str]) -> list[str]:
        """The kopf peering objects named `name` that do not exist (kopf would idle without them)."""
        wanted = ([("ClusterKopfPeering", None)] if not namespaces
                  else [("KopfPeering", namespace) for namespace in namespaces])
        missing = []
        for kind, namespace in wanted:
            try:
                if namespace is None:
                    await self.custom.get_cluster_custom_object("kopf.dev", "v1", "clusterkopfpeerings", name)
                else:
                    await self.custom.get_namespaced_custom_object("kopf.dev", "v1", namespace, "kopfpeerings", name)
            except ApiException as exc:
                if exc.status != 404:
                    raise
                missing.append(f"{kind} {name}" + (f" in namespace {namespace}" if namespace else ""))
        return missing

    async def create_secret(self, namespace: str, body: client.V1Secret) -> None:
        await self.core.create_namespaced_secret(namespace, body)

    async def patch_secret(self, namespace: str, name: str, resource_version: str, patch: dict[str, Any]) -> None:
        patch = {**patch, "metadata": {**patch.get("metadata", {}), "resourceVersion": resource_version}}
        await self.core.patch_namespaced_secret(name, namespace, patch, _content_type="application/merge-patch+json")


async def retry_on_conflict(metrics: OperatorMetrics, resource: str, attempt: Callable[[], Awaitable[Any]]) -> Any:
    """Run `attempt` (which reads, decides and writes) again when its write conflicts."""
    for _ in range(CONFLICT_ATTEMPTS):
        try:
            return await attempt()
        except ApiException as exc:
            if exc.status != 409:
                raise
            metrics.conflicts.labels(resource).inc()
            await conflict_pause()
    raise RuntimeError(f"{resource}: still conflicting after {CONFLICT_ATTEMPTS} attempts")
