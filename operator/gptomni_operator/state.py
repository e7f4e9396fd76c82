"""OperatorState: the one place that holds the operator's settings, metrics and, once
kopf has started it, its clients, cookie cache and publishers (pools and key sets)."""

from __future__ import annotations

from dataclasses import dataclass, field

from gptomni_common.upstream import UpstreamClient
from gptomni_operator.cookies import CookieCache
from gptomni_operator.key_set import KeySetPublishers
from gptomni_operator.kube import KubeApi, make_api_client
from gptomni_operator.metrics import OperatorMetrics
from gptomni_operator.publisher import Publishers
from gptomni_operator.settings import OperatorSettings


@dataclass(frozen=True)
class Running:
    upstream: UpstreamClient
    kube: KubeApi
    cookies: CookieCache
    publishers: Publishers
    key_sets: KeySetPublishers


@dataclass
class OperatorState:
    settings: OperatorSettings
    metrics: OperatorMetrics = field(default_factory=OperatorMetrics)
    _running: Running | None = None

    async def start(self) -> None:
        kube = KubeApi(await make_api_client(), self.metrics)
        cookies = CookieCache()
        retry_base_seconds = min(self.settings.failure_backoff_base_seconds, 5.0)
        publishers = Publishers(kube, cookies, self.metrics, retry_base_seconds)
        key_sets = KeySetPublishers(self.settings.key_set_secret, kube, self.metrics, retry_base_seconds)
        self._running = Running(UpstreamClient(self.settings.upstream_url), kube, cookies, publishers, key_sets)

    async def stop(self) -> None:
        running, self._running = self._running, None
        if running is not None:
            await running.publishers.close()
            await running.key_sets.close()
            await running.upstream.aclose()
            await running.kube.close()

    def running(self) -> Running:
        if self._running is None:
            raise RuntimeError("operator used before start-up finished")
        return self._running
