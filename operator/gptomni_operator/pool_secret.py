"""Write each target Secret from the CRs that point at it (the contract in docs/credentials.md).

The content is a pure function of the cluster's state (CRs, their statuses and cookie
Secrets), so a restarted operator writes exactly the same pool: nothing is dropped or
duplicated. A content-hash annotation makes unchanged pools no-ops, so relay pods do not
see churn.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import logging
from collections import defaultdict
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from kubernetes_asyncio import client

from gptomni_common.pool_file import SECRET_KEY, PoolDocument, PoolEntry
from gptomni_operator import CONTENT_HASH_ANNOTATION, MANAGED_BY
from gptomni_operator.kube import CookieUnavailable, KubeApi
from gptomni_operator.metrics import OperatorMetrics
from gptomni_operator.spec import CredentialSpec
from gptomni_operator.verdict import was_healthy

log = logging.getLogger(__name__)

MANAGED_LABELS = {"app.kubernetes.io/managed-by": MANAGED_BY, "app.kubernetes.io/part-of": "gptomni"}


class TargetConflict(Exception):
    """The target Secret exists but was not created by this operator: never overwrite it."""


@dataclass(frozen=True)
class SyncResult:
    written: str  # created | updated | unchanged
    members: list[str]


def credential_id(namespace: str, name: str) -> str:
    return f"{namespace}/{name}"


def content_hash(entries: list[PoolEntry]) -> str:
    canonical = PoolDocument(version=1, credentials=entries).model_dump_json(by_alias=True, exclude={"generated_at"})
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def belongs_in_pool(body: dict[str, Any], spec: CredentialSpec) -> bool:
    metadata = body.get("metadata") or {}
    return not spec.suspend and not metadata.get("deletionTimestamp") and was_healthy(body.get("status") or {}) is True


class PoolSecretWriter:
    def __init__(self, kube: KubeApi, metrics: OperatorMetrics) -> None:
        self._kube = kube
        self._metrics = metrics
        self._locks: defaultdict[tuple[str, str], asyncio.Lock] = defaultdict(asyncio.Lock)

    async def sync(self, namespace: str, target: str, overrides: dict[str, bool] | None = None) -> SyncResult:
        """Rewrite `namespace/target` if its content changed. `overrides` says in/out for CRs
        whose new verdict is not in the API yet (the caller is about to patch it)."""
        overrides = overrides or {}
        async with self._locks[(namespace, target)]:
            entries = await self._members(namespace, target, overrides)
            digest = content_hash(entries)
            existing = await self._kube.read_secret(namespace, target)
            if existing is not None:
                labels = existing.metadata.labels or {}
                if labels.get("app.kubernetes.io/managed-by") != MANAGED_BY:
                    raise TargetConflict(f"Secret {namespace}/{target} exists and is not managed by {MANAGED_BY}")
                if (existing.metadata.annotations or {}).get(CONTENT_HASH_ANNOTATION) == digest:
                    return self._done(namespace, target, "unchanged", entries)
            document = PoolDocument(version=1, generated_at=datetime.now(UTC), credentials=entries)
            encoded = base64.b64encode(document.model_dump_json(by_alias=True).encode("utf-8")).decode("ascii")
            annotations = {CONTENT_HASH_ANNOTATION: digest}
            if existing is None:
                await self._kube.create_secret(namespace, client.V1Secret(
                    metadata=client.V1ObjectMeta(name=target, namespace=namespace, labels=MANAGED_LABELS,
                                                 annotations=annotations),
                    type="Opaque",
                    data={SECRET_KEY: encoded},
                ))
                return self._done(namespace, target, "created", entries)
            await self._kube.patch_secret(namespace, target, {
                "metadata": {"annotations": annotations, "labels": MANAGED_LABELS},
                "data": {SECRET_KEY: encoded},
            })
            return self._done(namespace, target, "updated", entries)

    async def _members(self, namespace: str, target: str, overrides: dict[str, bool]) -> list[PoolEntry]:
        entries: list[PoolEntry] = []
        for body in await self._kube.list_credentials(namespace):
            name = body["metadata"]["name"]
            try:
                spec = CredentialSpec.of(body)
            except ValueError:
                continue  # an invalid spec never joins a pool; its own status says why
            if spec.target_secret != target:
                continue
            in_pool = overrides[name] if name in overrides else belongs_in_pool(body, spec)
            if not in_pool:
                continue
            try:
                cookie = await self._kube.read_cookie(namespace, spec.cookie_secret_ref)
            except CookieUnavailable:
                continue
            entries.append(PoolEntry(id=credential_id(namespace, name), cookie=cookie, weight=spec.weight,
                                     maxConcurrency=spec.max_concurrency))
        return sorted(entries, key=lambda entry: entry.id)

    def _done(self, namespace: str, target: str, written: str, entries: list[PoolEntry]) -> SyncResult:
        self._metrics.secret_writes.labels(written).inc()
        self._metrics.healthy_credentials.labels(namespace, target).set(len(entries))
        if written != "unchanged":
            log.info("pool secret written", extra={"secret": f"{namespace}/{target}", "result": written,
                                                   "credentials": [e.id for e in entries]})
        return SyncResult(written, [entry.id for entry in entries])
