"""OperatorState: the one place that holds the operator's clients and metrics."""

from __future__ import annotations

from dataclasses import dataclass, field

from gptomni_common.upstream import UpstreamClient
from gptomni_operator.kube import KubeApi
from gptomni_operator.metrics import OperatorMetrics
from gptomni_operator.pool_secret import PoolSecretWriter
from gptomni_operator.settings import OperatorSettings


@dataclass
class OperatorState:
    settings: OperatorSettings
    metrics: OperatorMetrics = field(default_factory=OperatorMetrics)
    upstream: UpstreamClient | None = None
    kube: KubeApi | None = None
    writer: PoolSecretWriter | None = None

    def ready(self) -> tuple[UpstreamClient, KubeApi, PoolSecretWriter]:
        if self.upstream is None or self.kube is None or self.writer is None:
            raise RuntimeError("operator used before start-up finished")
        return self.upstream, self.kube, self.writer
