"""The key-set publisher: one per namespace, writing that namespace's GPTOmniAPIKeys into
the key-set Secret the relay mounts (the contract in gptomni_common/api_key_set.py).

A pass reads the keys from the operator's index, reads each key's Secret (creating it,
or the key in it, with a random key when missing: `kubectl apply` of a GPTOmniAPIKey is
all a user does), and writes the names, salted hashes, models, limits and expiry of the
keys that are neither disabled nor expired, never a key. The salt stays the one the
Secret holds, so an unchanged set is not written again (relay pods see no churn). Then
each key's status gets its conditions and fingerprint. A pass is due again when the
next key expires.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import logging
import secrets
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from kubernetes_asyncio import client

from gptomni_common.api_key_set import (
    SECRET_KEY,
    KeySetDocument,
    KeySetEntry,
    KeySetFileError,
    key_fingerprint,
    key_hash,
    parse_key_set,
)
from gptomni_operator import API_KEY_KIND, API_KEY_PLURAL, GROUP, MANAGED_BY, VERSION
from gptomni_operator.key_spec import KeyMember, KeyUnusable, generate_key, key_from_data
from gptomni_operator.kube import KubeApi
from gptomni_operator.metrics import OperatorMetrics
from gptomni_operator.publisher import MANAGED_LABELS, is_managed, secret_identity, write_managed_secret
from gptomni_operator.serial_passes import SerialPasses
from gptomni_operator.verdict import condition, make_condition, with_condition

log = logging.getLogger(__name__)

# The index the handlers are given: namespace -> its GPTOmniAPIKeys.
KeysIndex = Mapping[str, Iterable[KeyMember]]
CONDITIONS = ("Ready", "Disabled", "Expired", "SecretMissing")


def key_set_hash(entries: list[KeySetEntry], salt: str) -> str:
    canonical = KeySetDocument(version=1, salt=salt, keys=entries).model_dump_json(by_alias=True, exclude={"generated_at"})
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def current_key_set(secret: client.V1Secret | None) -> KeySetDocument | None:
    encoded = ((secret.data or {}) if secret is not None else {}).get(SECRET_KEY)
    if encoded is None:
        return None
    try:
        return parse_key_set(base64.b64decode(encoded))
    except (KeySetFileError, ValueError):
        return None


@dataclass(frozen=True)
class KeyVerdict:
    """A key's part in one pass: its conditions (type -> (ok, reason, message)) and fingerprint."""

    conditions: dict[str, tuple[bool, str, str]]
    fingerprint: str | None

    @property
    def published(self) -> bool:
        return self.conditions["Ready"][0]


def _verdict(ready: tuple[bool, str, str], *, disabled: bool = False, expired: bool = False,
             missing: tuple[bool, str, str] = (False, "KeyPresent", "the Secret holds the key"),
             fingerprint: str | None = None) -> KeyVerdict:
    return KeyVerdict({
        "Ready": ready,
        "Disabled": (disabled, "Disabled" if disabled else "Enabled",
                     "spec.disabled is true: the key is refused" if disabled else "spec.disabled is false"),
        "Expired": (expired, "Expired" if expired else "NotExpired",
                    "spec.expiresAt has passed: the key is refused" if expired else "spec.expiresAt is unset or ahead"),
        "SecretMissing": missing,
    }, fingerprint)


class KeySetPublisher(SerialPasses[frozenset[str]]):
    def __init__(self, namespace: str, secret: str, kube: KubeApi, metrics: OperatorMetrics,
                 retry_base_seconds: float) -> None:
        super().__init__(namespace, secret, metrics, retry_base_seconds, frozenset())
        self._kube = kube
        self.keys: KeysIndex = {}
        self.seen: tuple[bool, str | None] | None = None  # the Secret as the last pass left it
        self._expiry_timer: asyncio.TimerHandle | None = None

    async def close(self) -> None:
        if self._expiry_timer is not None:
            self._expiry_timer.cancel()
        await super().close()

    async def _pass(self) -> frozenset[str]:
        members = sorted((m for m in self.keys.get(self.namespace, ()) if not m.deleting), key=lambda m: m.name)
        existing = await self._kube.read_secret(self.namespace, self.secret)
        if existing is not None and not is_managed(existing):
            self.seen = secret_identity(existing.metadata.labels, existing.metadata.annotations)
            conflict = f"Secret {self.namespace}/{self.secret} exists and is not managed by {MANAGED_BY}"
            self._metrics.reconcile_errors.labels("target_conflict").inc()
            for member in members:
                await self._mark(member, _verdict((False, "KeySetSecretConflict", conflict)))
            return frozenset()
        current = current_key_set(existing)
        salt = current.salt if current is not None else secrets.token_hex(16)
        now = datetime.now(UTC)
        entries: list[KeySetEntry] = []
        verdicts: dict[str, KeyVerdict] = {}
        for member in members:
            verdict, entry = await self._judge(member, salt, now)
            verdicts[member.name] = verdict
            if entry is not None:
                entries.append(entry)
        digest = key_set_hash(entries, salt)
        document = KeySetDocument(version=1, generated_at=now, salt=salt, keys=entries)
        written = await write_managed_secret(
            self._kube, self.namespace, self.secret, existing, SECRET_KEY,
            document.model_dump_json(by_alias=True, exclude_none=True).encode("utf-8"), digest,
            None if current is None else key_set_hash(current.keys, current.salt))
        self._metrics.secret_writes.labels(written).inc()
        self._metrics.published_api_keys.labels(self.namespace, self.secret).set(len(entries))
        if written != "unchanged":
            log.info("key-set secret written", extra={"secret": f"{self.namespace}/{self.secret}", "result": written,
                                                       "keys": [entry.name for entry in entries]})
        self.seen = (True, digest)
        for member in members:
            await self._mark(member, verdicts[member.name])
        self._schedule_next_expiry(members, now)
        return frozenset(entry.name for entry in entries)

    async def _judge(self, member: KeyMember, salt: str, now: datetime) -> tuple[KeyVerdict, KeySetEntry | None]:
        spec = member.spec
        if spec is None:
            return _verdict((False, "InvalidSpec", member.spec_problem)), None
        try:
            key = await self._ensure_key(member)
        except KeyUnusable as exc:
            return _verdict((False, "SecretMissing", exc.message), missing=(True, exc.reason, exc.message),
                            disabled=spec.disabled), None
        fingerprint = key_fingerprint(key)
        expired = spec.expires_at is not None and spec.expires_at.astimezone(UTC) <= now
        if spec.disabled:
            return _verdict((False, "Disabled", "spec.disabled is true: the key is not published"), disabled=True,
                            expired=expired, fingerprint=fingerprint), None
        if expired:
            return _verdict((False, "Expired", f"expired at {spec.expires_at}: the key is not published"),
                            expired=True, fingerprint=fingerprint), None
        entry = KeySetEntry(name=member.name, hash=key_hash(salt, key), fingerprint=fingerprint, models=spec.models,
                            limits=spec.limits, expires_at=spec.expires_at)
        return _verdict((True, "Published", f"published in Secret {self.secret}"), fingerprint=fingerprint), entry

    async def _ensure_key(self, member: KeyMember) -> str:
        """The key in the member's Secret, after writing a random one there if it had none."""
        assert member.spec is not None
        ref = member.spec.secret_ref
        secret = await self._kube.read_secret(self.namespace, ref.name)
        if secret is not None:
            key = key_from_data(self.namespace, ref, secret.data or {})
            if key is not None:
                return key
        generated = generate_key()
        encoded = base64.b64encode(generated.encode("utf-8")).decode("ascii")
        try:
            if secret is None:
                await self._kube.create_secret(self.namespace, client.V1Secret(
                    metadata=client.V1ObjectMeta(
                        name=ref.name, namespace=self.namespace, labels=MANAGED_LABELS,
                        # Deleted with the GPTOmniAPIKey it was made for (by the garbage collector).
                        owner_references=[client.V1OwnerReference(
                            api_version=f"{GROUP}/{VERSION}", kind=API_KEY_KIND, name=member.name, uid=member.uid)]),
                    type="Opaque", data={ref.key: encoded}))
                log.info("API key secret created", extra={"secret": f"{self.namespace}/{ref.name}", "api_key": member.name})
            else:
                await self._kube.patch_secret(self.namespace, ref.name, secret.metadata.resource_version,
                                              {"data": {ref.key: encoded}})
                log.info("API key written into its secret", extra={"secret": f"{self.namespace}/{ref.name}",
                                                                  "api_key": member.name})
        except client.ApiException as exc:
            if exc.status == 409:
                raise  # someone else wrote it first: the pass runs again and reads theirs
            raise KeyUnusable("CannotCreate", f"could not write a key into Secret {self.namespace}/{ref.name}: "
                                              f"HTTP {exc.status} {exc.reason}") from None
        return generated

    async def _mark(self, member: KeyMember, verdict: KeyVerdict) -> None:
        """Write the key's conditions and fingerprint where they changed."""

        def change(status: dict[str, Any]) -> dict[str, Any] | None:
            wanted = {"fingerprint": verdict.fingerprint, "keySetSecret": self.secret,
                      "observedGeneration": member.generation}
            same = all(status.get(field) == value for field, value in wanted.items())
            conditions = status.get("conditions")
            for kind in CONDITIONS:
                ok, reason, message = verdict.conditions[kind]
                found = condition(status, kind) or {}
                if ((found.get("status"), found.get("reason"), found.get("message"), found.get("observedGeneration"))
                        != ("True" if ok else "False", reason, message, member.generation)):
                    same = False
                    new = make_condition(kind, ok, reason, message, found or None, datetime.now(UTC), member.generation)
                    conditions = with_condition(conditions, new)
            return None if same else {**wanted, "conditions": conditions}

        await self._kube.update_status(self.namespace, member.name, member.resource_version, member.status, change,
                                       plural=API_KEY_PLURAL)

    def _schedule_next_expiry(self, members: list[KeyMember], now: datetime) -> None:
        """A pass when the next key expires, so its status says so and it leaves the set."""
        if self._expiry_timer is not None:
            self._expiry_timer.cancel()
            self._expiry_timer = None
        upcoming = [m.spec.expires_at.astimezone(UTC) for m in members
                    if m.spec is not None and m.spec.expires_at is not None and m.spec.expires_at.astimezone(UTC) > now]
        if upcoming:
            delay = (min(upcoming) - now).total_seconds() + 0.05
            self._expiry_timer = asyncio.get_running_loop().call_later(delay, self.request)


class KeySetPublishers:
    """Every key-set publisher of this operator, one per namespace, made on first use."""

    def __init__(self, secret: str, kube: KubeApi, metrics: OperatorMetrics, retry_base_seconds: float) -> None:
        self.secret = secret
        self._args = (kube, metrics, retry_base_seconds)
        self._publishers: dict[str, KeySetPublisher] = {}

    def of(self, namespace: str, keys: KeysIndex) -> KeySetPublisher:
        publisher = self._publishers.get(namespace)
        if publisher is None:
            publisher = self._publishers[namespace] = KeySetPublisher(namespace, self.secret, *self._args)
        publisher.keys = keys
        return publisher

    def known(self, namespace: str) -> KeySetPublisher | None:
        return self._publishers.get(namespace)

    async def close(self) -> None:
        await asyncio.gather(*(publisher.close() for publisher in self._publishers.values()))
