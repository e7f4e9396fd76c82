"""The GPTOmniCredential custom resource as the operator reads it (schema: k8s/crd.yaml)."""

from __future__ import annotations

import re
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

_DURATION = re.compile(r"^(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s)?$")


def parse_duration(text: str) -> float:
    """Go-style durations as Kubernetes users write them: `5m`, `30s`, `1h30m`."""
    match = _DURATION.match(text.strip())
    if not text.strip() or match is None:
        raise ValueError(f"not a duration: {text!r} (use e.g. 30s, 5m, 1h)")
    hours, minutes, seconds = (int(group or 0) for group in match.groups())
    return float(hours * 3600 + minutes * 60 + seconds)


class SecretKeyRef(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)
    name: str
    key: str = "cookie"


class HealthCheck(BaseModel):
    model_config = ConfigDict(extra="ignore")
    interval: str = "5m"
    timeout: str = "30s"
    disabled: bool = False

    @property
    def interval_seconds(self) -> float:
        return max(10.0, parse_duration(self.interval))

    @property
    def timeout_seconds(self) -> float:
        return max(1.0, parse_duration(self.timeout))


class CredentialSpec(BaseModel):
    model_config = ConfigDict(extra="ignore", populate_by_name=True)

    cookie_secret_ref: SecretKeyRef = Field(alias="cookieSecretRef")
    # No default here nor in the CRD: an unset target is the operator's
    # default_target_secret (see target()), so the chart's poolSecret.name applies.
    target_secret: str | None = Field(None, alias="targetSecret")
    weight: int = Field(1, ge=1)
    max_concurrency: int = Field(8, ge=1, alias="maxConcurrency")
    suspend: bool = False
    health_check: HealthCheck = Field(default_factory=HealthCheck, alias="healthCheck")

    @classmethod
    def of(cls, body: Any) -> CredentialSpec:
        return cls.model_validate(dict(body.get("spec") or {}))

    def target(self, default: str) -> str:
        """The pool Secret this credential is published into."""
        return self.target_secret or default


def target_of(body: Any, default: str) -> str:
    """The pool Secret of a credential whose spec may not even parse (its status says why)."""
    return (body.get("spec") or {}).get("targetSecret") or default
