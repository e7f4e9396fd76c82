"""Prometheus metrics of one relay process (one uvicorn worker per pod; scale with replicas).

Each app gets its own registry so several relays can live in one test process.
Credential labels carry ids only, never cookies; their cardinality is the pool size.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from gptomni_relay.core.pool import CredentialStatus, Health, PoolMode

# LLM answers: the first token in tens of ms to tens of seconds, whole answers up to minutes.
TTFT_BUCKETS = (0.025, 0.05, 0.1, 0.25, 0.5, 1, 2, 4, 8, 15, 30, 60)
DURATION_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 40, 80, 160, 320, 600)


class _PoolCollector(Collector):
    """Reads the pool at scrape time, so the gauges can never drift from the truth."""

    def __init__(self, statuses: Callable[[], list[CredentialStatus]]) -> None:
        self._statuses = statuses

    def collect(self) -> Iterable[Metric]:
        statuses = self._statuses()
        state = GaugeMetricFamily(
            "gptomni_credential_state", "1 for the state each credential is in", labels=["credential", "state"]
        )
        in_flight = GaugeMetricFamily(
            "gptomni_credential_in_flight", "Requests holding each credential now", labels=["credential"]
        )
        for status in statuses:
            for health in Health:
                state.add_metric([status.id, health.value], 1.0 if status.health is health else 0.0)
            in_flight.add_metric([status.id], float(status.in_flight))
        yield state
        yield in_flight


# --- the pool's mode (docs/shared-pool.md) ------------------------------------------------
class _PoolModeCollector(Collector):
    """Which pool the relay runs on and, with a shared store, whether the store answers."""

    def __init__(self, mode: Callable[[], tuple[PoolMode, bool | None]]) -> None:
        self._mode = mode

    def collect(self) -> Iterable[Metric]:
        current, store_up = self._mode()
        mode = GaugeMetricFamily(
            "gptomni_pool_mode", "1 for the pool mode this relay runs in: local (in-process), shared (cluster-wide "
            "limits in the shared store), fallback (store out of reach: this replica's share)", labels=["mode"])
        for candidate in PoolMode:
            mode.add_metric([candidate.value], 1.0 if current is candidate else 0.0)
        yield mode
        if store_up is not None:
            yield GaugeMetricFamily("gptomni_shared_store_up", "1 while the shared pool's store answers",
                                    value=1.0 if store_up else 0.0)
# --- end of the pool's mode ----------------------------------------------------------------


class RelayMetrics:
    def __init__(self, statuses: Callable[[], list[CredentialStatus]],
                 pool_mode: Callable[[], tuple[PoolMode, bool | None]] = lambda: (PoolMode.LOCAL, None)) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter(
            "gptomni_requests", "Chat completion requests by outcome", ["model", "status", "stream"], registry=r
        )
        self.request_duration = Histogram(
            "gptomni_request_duration_seconds", "Whole request time", ["stream"], buckets=DURATION_BUCKETS, registry=r
        )
        self.time_to_first_token = Histogram(
            "gptomni_time_to_first_token_seconds", "Request start to first answer text", ["model"], buckets=TTFT_BUCKETS, registry=r
        )
        self.active_streams = Gauge("gptomni_active_streams", "Open streaming responses", registry=r)
        self.upstream_attempts = Counter(
            "gptomni_upstream_attempts", "Upstream attempts by credential and outcome", ["credential", "outcome"], registry=r
        )
        self.failovers = Counter("gptomni_failovers", "Retries on another credential before the first byte", registry=r)
        self.stream_interruptions = Counter(
            "gptomni_stream_interruptions", "Answers that broke after the first byte", ["outcome"], registry=r
        )
        self.pool_reloads = Counter("gptomni_pool_reloads", "Pool file reloads by result", ["result"], registry=r)
        self.prompt_tokens = Counter("gptomni_prompt_tokens", "Estimated prompt tokens", ["model"], registry=r)
        self.completion_tokens = Counter("gptomni_completion_tokens", "Estimated completion tokens", ["model"], registry=r)
        r.register(_PoolCollector(statuses))
        r.register(_PoolModeCollector(pool_mode))

    def observe_request(self, model: str, status: int | str, stream: bool, seconds: float) -> None:
        """One finished chat completion, whichever way it ended."""
        stream_label = "true" if stream else "false"
        self.requests.labels(model, str(status), stream_label).inc()
        self.request_duration.labels(stream_label).observe(seconds)
