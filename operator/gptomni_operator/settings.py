"""Operator configuration from `GPTOMNI_OPERATOR_*` variables (and the shared `GPTOMNI_UPSTREAM_URL`)."""

from __future__ import annotations

from pydantic import AliasChoices, Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from gptomni_common.setting_types import BaseUrl, CommaList


class OperatorSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="GPTOMNI_OPERATOR_", extra="ignore", populate_by_name=True)

    upstream_url: BaseUrl = Field(
        "https://gptomni.ai", validation_alias=AliasChoices("GPTOMNI_OPERATOR_UPSTREAM_URL", "GPTOMNI_UPSTREAM_URL", "upstream_url")
    )
    # Empty: watch every namespace (cluster-wide). Otherwise only these.
    namespaces: CommaList = Field(default_factory=list)
    metrics_port: int = Field(9090, ge=0, le=65535)
    # Transient failures (timeouts, 5xx) keep the previous verdict until this many in a row.
    transient_failure_threshold: int = Field(3, ge=1)
    failure_backoff_base_seconds: float = Field(30.0, gt=0)
    jitter_fraction: float = Field(0.1, ge=0, le=0.5)
    # kopf peering: one active operator among replicas. Empty means standalone.
    peering: str = ""
    # For development and tests: talk to this API server with this token instead of
    # the in-cluster service account or ~/.kube/config.
    kube_server: str | None = None
    kube_token: str = "unused"
    log_level: str = "INFO"
