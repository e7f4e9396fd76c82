"""The publisher: one per (namespace, pool Secret), writing that Secret from the operator's
index of credentials (the contract in docs/credentials.md).

A pass reads the members from the index (no API call), takes each member's cookie from
memory or from the pool as it stands, provided its digest is the one the judge checked,
and costs one GET and at most one write of the pool Secret, plus one status write for
each member whose Ready condition changes. The content is a function of the members'
statuses and checked cookies, so a restarted operator writes the same pool, and an
unchanged pool is not written at all (relay pods see no churn).

Passes for one Secret never overlap (serial_passes.py).
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from kubernetes_asyncio import client

from gptomni_common.pool_file import SECRET_KEY, PoolDocument, PoolEntry, PoolFileError, parse_pool_document
from gptomni_operator import CONTENT_HASH_ANNOTATION, MANAGED_BY
from gptomni_operator.cookies import CookieCache, cookie_digest
from gptomni_operator.kube import KubeApi
from gptomni_operator.members import Member
from gptomni_operator.metrics import OperatorMetrics
from gptomni_operator.serial_passes import SerialPasses
from gptomni_operator.verdict import condition, make_condition, with_condition

log = logging.getLogger(__name__)

MANAGED_LABELS = {"app.kubernetes.io/managed-by": MANAGED_BY, "app.kubernetes.io/part-of": "gptomni"}
# The index the handlers are given: (namespace, pool Secret) -> its members.
MembersIndex = Mapping[tuple[str, str], Iterable[Member]]


def content_hash(entries: list[PoolEntry]) -> str:
    canonical = PoolDocument(version=1, credentials=entries).model_dump_json(by_alias=True, exclude={"generated_at"})
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def is_managed(secret: client.V1Secret) -> bool:
    return (secret.metadata.labels or {}).get("app.kubernetes.io/managed-by") == MANAGED_BY


def secret_identity(labels: Mapping[str, str] | None, annotations: Mapping[str, str] | None) -> tuple[bool, str | None]:
    """What a publisher compares to tell its own writes from someone else's edits."""
    return (labels or {}).get("app.kubernetes.io/managed-by") == MANAGED_BY, (annotations or {}).get(CONTENT_HASH_ANNOTATION)


def current_pool(secret: client.V1Secret | None) -> PoolDocument | None:
    encoded = ((secret.data or {}) if secret is not None else {}).get(SECRET_KEY)
    if encoded is None:
        return None
    try:
        return parse_pool_document(base64.b64decode(encoded))
    except (PoolFileError, ValueError):
        return None


async def write_managed_secret(kube: KubeApi, namespace: str, name: str, existing: client.V1Secret | None,
                               data_key: str, content: bytes, digest: str, existing_digest: str | None) -> str:
    """Create or update a Secret the operator publishes (`data_key` = `content`, whose
    canonical hash is `digest`); "unchanged" when it already holds that content (the
    hash of what it holds is `existing_digest`), so relay pods see no churn."""
    encoded = base64.b64encode(content).decode("ascii")
    annotations = {CONTENT_HASH_ANNOTATION: digest}
    if existing is None:
        await kube.create_secret(namespace, client.V1Secret(
            metadata=client.V1ObjectMeta(name=name, namespace=namespace, labels=MANAGED_LABELS,
                                         annotations=annotations),
            type="Opaque",
            data={data_key: encoded},
        ))
        return "created"
    labels, found = existing.metadata.labels or {}, existing.metadata.annotations or {}
    if (existing_digest == digest and found.get(CONTENT_HASH_ANNOTATION) == digest
            and MANAGED_LABELS.items() <= labels.items()):
        return "unchanged"
    await kube.patch_secret(namespace, name, existing.metadata.resource_version, {
        "metadata": {"annotations": annotations, "labels": MANAGED_LABELS},
        "data": {data_key: encoded},
    })
    return "updated"


@dataclass(frozen=True)
class Published:
    ids: frozenset[str]
    conflict: str | None = None  # why nothing could be written


class TargetPublisher(SerialPasses[Published]):
    def __init__(self, namespace: str, target: str, kube: KubeApi, cookies: CookieCache, metrics: OperatorMetrics,
                 retry_base_seconds: float) -> None:
        super().__init__(namespace, target, metrics, retry_base_seconds, Published(frozenset()))
        self.target = target
        self._kube, self._cookies = kube, cookies
        self.members: MembersIndex = {}
        # The pool Secret as the last pass left it, to tell our writes from others' edits.
        self.seen: tuple[bool, str | None] | None = None

    async def _pass(self) -> Published:
        members = sorted(self.members.get((self.namespace, self.target), ()), key=lambda member: member.name)
        existing = await self._kube.read_secret(self.namespace, self.target)
        if existing is not None and not is_managed(existing):
            self.seen = secret_identity(existing.metadata.labels, existing.metadata.annotations)
            conflict = f"Secret {self.namespace}/{self.target} exists and is not managed by {MANAGED_BY}"
            self._metrics.reconcile_errors.labels("target_conflict").inc()
            self._metrics.healthy_credentials.labels(self.namespace, self.target).set(0)
            await self._mark(members, frozenset(), set(), conflict)
            return Published(frozenset(), conflict)

        previous = {entry.id: entry.cookie for entry in (current_pool(existing) or PoolDocument(version=1, credentials=[])).credentials}
        entries: list[PoolEntry] = []
        unchecked: set[str] = set()
        for member in members:
            if member.awaits_digest and member.id in previous:
                cookie: str | None = previous[member.id]  # judged healthy before digests: kept until re-judged
            elif not member.eligible:
                continue
            else:
                assert member.cookie_ref is not None and member.cookie_digest is not None
                cookie = self._cookies.checked(self.namespace, member.cookie_ref, member.cookie_digest)
                if cookie is None and member.id in previous and cookie_digest(previous[member.id]) == member.cookie_digest:
                    cookie = previous[member.id]  # the published one is still the checked one
            if cookie is None:
                unchecked.add(member.id)  # its cookie changed after the check: it waits for the next
                continue
            entries.append(PoolEntry(id=member.id, cookie=cookie, weight=member.weight,
                                     maxConcurrency=member.max_concurrency))
        digest = content_hash(entries)
        current = current_pool(existing)
        document = PoolDocument(version=1, generated_at=datetime.now(UTC), credentials=entries)
        written = await write_managed_secret(
            self._kube, self.namespace, self.target, existing, SECRET_KEY,
            document.model_dump_json(by_alias=True).encode("utf-8"), digest,
            None if current is None else content_hash(current.credentials))
        self._metrics.secret_writes.labels(written).inc()
        self._metrics.healthy_credentials.labels(self.namespace, self.target).set(len(entries))
        if written != "unchanged":
            log.info("pool secret written", extra={"secret": f"{self.namespace}/{self.target}", "result": written,
                                                   "credentials": [entry.id for entry in entries]})
        self.seen = (True, digest)
        published = frozenset(entry.id for entry in entries)
        await self._mark(members, published, unchecked, None)
        return Published(published)

    async def _mark(self, members: list[Member], published: frozenset[str], unchecked: set[str],
                    conflict: str | None) -> None:
        """Write Ready (and the pool Secret's name) into each judged member whose changed."""
        for member in members:
            if member.deleting or not member.judged:
                continue
            ready = self._ready(member, published, unchecked, conflict)
            if (member.ready, member.ready_generation, member.published_target) == (ready, member.generation, self.target):
                continue

            def change(status: dict[str, Any], member: Member = member, ready: tuple[str, str, str] = ready) -> dict[str, Any] | None:
                found = condition(status, "Ready") or {}
                if ((found.get("status"), found.get("reason"), found.get("message"), found.get("observedGeneration"),
                     status.get("targetSecret")) == (*ready, member.generation, self.target)):
                    return None
                new = make_condition("Ready", ready[0] == "True", ready[1], ready[2], found or None,
                                     datetime.now(UTC), member.generation)
                return {"conditions": with_condition(status.get("conditions"), new), "targetSecret": self.target}

            await self._kube.update_status(self.namespace, member.name, member.resource_version, member.status, change)

    def _ready(self, member: Member, published: frozenset[str], unchecked: set[str],
               conflict: str | None) -> tuple[str, str, str]:
        if member.id in published:
            return "True", "InPool", f"published in Secret {self.target}"
        if conflict is not None and member.eligible:
            return "False", "TargetSecretConflict", conflict
        if member.suspended:
            why = "spec.suspend is true"
        elif member.id in unchecked:
            why = "its cookie changed after the last check; it returns once the new one passes"
        else:
            why = member.healthy_reason or "not healthy"
        return "False", "NotInPool", f"kept out of Secret {self.target}: {why}"


class Publishers:
    """Every publisher of this operator, made on first use."""

    def __init__(self, kube: KubeApi, cookies: CookieCache, metrics: OperatorMetrics, retry_base_seconds: float) -> None:
        self._args = (kube, cookies, metrics, retry_base_seconds)
        self._publishers: dict[tuple[str, str], TargetPublisher] = {}

    def of(self, namespace: str, target: str, members: MembersIndex) -> TargetPublisher:
        publisher = self._publishers.get((namespace, target))
        if publisher is None:
            publisher = self._publishers[(namespace, target)] = TargetPublisher(namespace, target, *self._args)
        publisher.members = members
        return publisher

    def known(self, namespace: str, target: str) -> TargetPublisher | None:
        return self._publishers.get((namespace, target))

    async def close(self) -> None:
        await asyncio.gather(*(publisher.close() for publisher in self._publishers.values()))
