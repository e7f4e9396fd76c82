"""Operator configuration from `GPTOMNI_OPERATOR_*` variables (and the shared `GPTOMNI_UPSTREAM_URL`).

The Kubernetes API is reached the standard way only: the in-cluster ServiceAccount, else
the kubeconfig `KUBECONFIG` names (or `~/.kube/config`), with TLS verified.
"""

from __future__ import annotations

from pydantic import AliasChoices, Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from gptomni_common.api_key_set import DEFAULT_KEY_SET_SECRET
from gptomni_common.pool_file import DEFAULT_POOL_SECRET
from gptomni_common.setting_types import BaseUrl, CommaList

# A Secret name (RFC 1123 subdomain), as the CRD's targetSecret pattern.
SECRET_NAME_PATTERN = r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$"


class OperatorSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="GPTOMNI_OPERATOR_", extra="ignore", populate_by_name=True)

    upstream_url: BaseUrl = Field(
        "https://gptomni.ai", validation_alias=AliasChoices("GPTOMNI_OPERATOR_UPSTREAM_URL", "GPTOMNI_UPSTREAM_URL", "upstream_url")
    )
    # Empty: watch every namespace (cluster-wide). Otherwise only these.
    namespaces: CommaList = Field(default_factory=list)
    # The pool Secret of credentials that name no spec.targetSecret (the chart sets it
    # from poolSecret.name, the Secret its relay mounts).
    default_target_secret: str = Field(DEFAULT_POOL_SECRET, min_length=1, max_length=253, pattern=SECRET_NAME_PATTERN)
    # The Secret each namespace's GPTOmniAPIKeys are published into (the chart sets it from
    # apiKeySet.secretName, the Secret its relay mounts).
    key_set_secret: str = Field(DEFAULT_KEY_SET_SECRET, min_length=1, max_length=253, pattern=SECRET_NAME_PATTERN)
    metrics_port: int = Field(9090, ge=0, le=65535)
    # Transient failures (timeouts, 5xx) keep the previous verdict until this many in a row.
    transient_failure_threshold: int = Field(3, ge=1)
    failure_backoff_base_seconds: float = Field(30.0, gt=0)
    jitter_fraction: float = Field(0.1, ge=0, le=0.5)
    # kopf peering: one active operator among replicas. Empty means standalone.
    peering: str = ""
    # kopf pauses every operator of a peering when two share a priority, so each process
    # draws its own at random unless one is given (the highest is the active one).
    peering_priority: int | None = None
    log_level: str = "INFO"
