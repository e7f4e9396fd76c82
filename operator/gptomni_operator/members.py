"""What the operator's indexes keep of each GPTOmniCredential: no API call needs it again.

`Member` is a credential as its pool's publisher sees it (spec, verdict, the digest of
the cookie that verdict is about); `CookieUse` is a credential as the Secret watch sees
it (which cookie it judged, and how to wake its judge).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from gptomni_operator.spec import CredentialSpec, SecretKeyRef, target_of
from gptomni_operator.verdict import condition

if TYPE_CHECKING:
    from gptomni_operator.memo import CredentialMemo


def credential_id(namespace: str, name: str) -> str:
    """The id of a credential in the pool file (docs/credentials.md)."""
    return f"{namespace}/{name}"


@dataclass(frozen=True)
class Member:
    namespace: str
    name: str
    target: str  # the pool Secret it belongs in: spec.targetSecret or the operator's default
    generation: int | None
    resource_version: str
    cookie_ref: SecretKeyRef | None  # None: the spec does not parse
    weight: int
    max_concurrency: int
    suspended: bool
    deleting: bool
    judged: bool  # the judge has written a verdict
    healthy: bool
    healthy_reason: str
    cookie_digest: str | None  # of the cookie the verdict is about
    published_target: str | None  # status.targetSecret: where the publisher last placed it
    ready: tuple[str, str, str] | None  # (status, reason, message) of the Ready condition
    ready_generation: int | None  # the generation Ready was written for
    status: dict[str, Any]

    @classmethod
    def of(cls, body: Any, default_target: str) -> Member:
        metadata, status = body["metadata"], dict(body.get("status") or {})
        try:
            spec: CredentialSpec | None = CredentialSpec.of(body)
        except ValueError:
            spec = None
        healthy, ready = condition(status, "Healthy") or {}, condition(status, "Ready")
        return cls(
            namespace=metadata["namespace"],
            name=metadata["name"],
            target=spec.target(default_target) if spec else target_of(body, default_target),
            generation=metadata.get("generation"),
            resource_version=metadata.get("resourceVersion", ""),
            cookie_ref=spec.cookie_secret_ref if spec else None,
            weight=spec.weight if spec else 1,
            max_concurrency=spec.max_concurrency if spec else 1,
            suspended=bool(spec and spec.suspend),
            deleting=bool(metadata.get("deletionTimestamp")),
            judged=bool(healthy),
            healthy=healthy.get("status") == "True",
            healthy_reason=str(healthy.get("reason", "")),
            cookie_digest=status.get("cookieDigest"),
            published_target=status.get("targetSecret"),
            ready=(ready.get("status", ""), ready.get("reason", ""), ready.get("message", "")) if ready else None,
            ready_generation=(ready or {}).get("observedGeneration"),
            status=status,
        )

    @property
    def id(self) -> str:
        return credential_id(self.namespace, self.name)

    @property
    def eligible(self) -> bool:
        """Belongs in its pool, given a cookie with the judged digest."""
        return (self.cookie_ref is not None and self.judged and self.healthy and not self.suspended
                and not self.deleting and self.cookie_digest is not None)

    @property
    def awaits_digest(self) -> bool:
        """Judged healthy by an operator version that kept no cookie digest in the status."""
        return (self.cookie_ref is not None and self.judged and self.healthy and not self.suspended
                and not self.deleting and self.cookie_digest is None)

    def publication(self) -> tuple[Any, ...]:
        """Everything a publisher's output depends on: a change here means publish again."""
        return (self.target, self.published_target, self.cookie_ref, self.weight, self.max_concurrency,
                self.suspended, self.deleting, self.judged, self.healthy, self.healthy_reason,
                self.cookie_digest, self.ready, self.ready_generation, self.generation)


@dataclass(frozen=True)
class CookieUse:
    """A credential that reads `key` of a cookie Secret, as the Secret watch needs it."""

    key: str
    judged_digest: str | None
    suspended: bool
    memo: CredentialMemo
