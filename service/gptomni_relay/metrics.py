"""Prometheus metrics of one relay process (one uvicorn worker per pod; scale with replicas).

Each app gets its own registry so several relays can live in one test process.
Credential labels carry ids only, never cookies; their cardinality is the pool size.
API-key labels carry the key's configured name, never the key.

Every series a dashboard or an alert reads exists from the start at 0 (each status of
each configured model, each outcome of each credential, each reload result): a series
born at its first event hides that event from `rate()` and `increase()`, and an empty
vector shows as "No data" rather than 0. Series of a credential or key name that left
the configuration are dropped.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable
from contextlib import AbstractContextManager, nullcontext
from enum import StrEnum

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from gptomni_common.upstream import Outcome, UpstreamError
from gptomni_relay.core.attempt_observer import AttemptObserver
from gptomni_relay.core.pool import CredentialStatus, Health, PoolMode

# LLM answers: the first token in tens of ms to tens of seconds, whole answers up to minutes.
TTFT_BUCKETS = (0.025, 0.05, 0.1, 0.25, 0.5, 1, 2, 4, 8, 15, 30, 60)
DURATION_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 40, 80, 160, 320, 600)
# Most requests get a slot at once; waits are bounded by GPTOMNI_ACQUIRE_TIMEOUT_SECONDS.
SLOT_WAIT_BUCKETS = (0.001, 0.005, 0.025, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30)

# The `model` label of a request refused before its model was read (chat_route.py).
UNKNOWN_MODEL = "unknown"
# Every `status` a chat completion can end with: refused before its model is known, or
# after (the 5xx of a stream that broke once it had started included; 499: client gone).
REFUSAL_STATUSES = ("400", "401", "404", "413")
ANSWER_STATUSES = ("200", "400", "429", "499", "500", "502", "503", "504")
STREAM_LABELS = ("true", "false")
POOL_RELOAD_RESULTS = ("ok", "invalid", "missing")
# Why a known key was refused (docs/api-keys.md): its limits, a model it may not use, expiry.
KEY_REFUSAL_REASONS = ("requests", "concurrency", "tokens", "model", "expired")
# Per-key series stay bounded whatever the key set holds: beyond this many names, the rest
# share the label `other`.
MAX_KEY_LABELS = 200
OTHER_KEYS = "other"


class StatusClass(StrEnum):
    """The per-API-key counter's `status_class` (few values per key: keys x statuses x models
    would be a lot of series); the exact status is on gptomni_requests_total."""

    OK = "2xx"
    CLIENT = "4xx"
    SERVER = "5xx"


class _PoolCollector(Collector):
    """Reads the pool at scrape time, so the gauges can never drift from the truth, and a
    credential that left the pool leaves these series with it."""

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
        by_state = GaugeMetricFamily(
            "gptomni_credentials", "Credentials in the pool by state (0 for an empty pool)", labels=["state"]
        )
        for status in statuses:
            for health in Health:
                state.add_metric([status.id, health.value], 1.0 if status.health is health else 0.0)
            in_flight.add_metric([status.id], float(status.in_flight))
        for health in Health:
            by_state.add_metric([health.value], float(sum(1 for status in statuses if status.health is health)))
        yield state
        yield in_flight
        yield by_state


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
                 pool_mode: Callable[[], tuple[PoolMode, bool | None]] = lambda: (PoolMode.LOCAL, None),
                 models: Iterable[str] = (), buffered_body_bytes: Callable[[], int] = lambda: 0) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter(
            "gptomni_requests", "Chat completion requests by outcome", ["model", "status", "stream"], registry=r
        )
        self.api_key_requests = Counter(
            "gptomni_api_key_requests", "Chat completion requests by API-key name and status class",
            ["api_key", "status_class"], registry=r,
        )
        self.api_key_refusals = Counter(
            "gptomni_api_key_refusals", "Requests of a known API key refused, by reason (requests, concurrency, "
            "tokens, model, expired)", ["api_key", "reason"], registry=r,
        )
        self.api_key_tokens = Counter(
            "gptomni_api_key_tokens", "Estimated prompt + completion tokens of API keys with limits", ["api_key"],
            registry=r,
        )
        self.api_key_budget_used = Gauge(
            "gptomni_api_key_budget_used_ratio", "Share of its tokensPerDay a key has used today, as this replica "
            "last counted it", ["api_key"], registry=r,
        )
        self.request_duration = Histogram(
            "gptomni_request_duration_seconds", "Whole request time", ["stream"], buckets=DURATION_BUCKETS, registry=r
        )
        self.time_to_first_token = Histogram(
            "gptomni_time_to_first_token_seconds", "Request start to first answer text", ["model"], buckets=TTFT_BUCKETS, registry=r
        )
        self.upstream_time_to_first_token = Histogram(
            "gptomni_upstream_time_to_first_token_seconds",
            "Upstream attempt start to its first answer text (attempts that got one)", buckets=TTFT_BUCKETS, registry=r,
        )
        self.slot_wait = Histogram(
            "gptomni_credential_wait_seconds", "Time a request waited for a free credential slot",
            buckets=SLOT_WAIT_BUCKETS, registry=r,
        )
        self.active_streams = Gauge("gptomni_active_streams", "Open streaming responses", registry=r)
        # Read at scrape time: the hot path only adds and subtracts an int (core/byte_budget.py).
        self.buffered_body_bytes = Gauge(
            "gptomni_buffered_body_bytes", "Bytes the request bodies being read hold of GPTOMNI_MAX_BUFFERED_BODY_BYTES",
            registry=r,
        )
        self.buffered_body_bytes.set_function(buffered_body_bytes)
        self.upstream_attempts = Counter(
            "gptomni_upstream_attempts", "Upstream attempts by credential and outcome", ["credential", "outcome"], registry=r
        )
        self.failovers = Counter("gptomni_failovers", "Retries on another credential before the first byte", registry=r)
        self.stream_interruptions = Counter(
            "gptomni_stream_interruptions", "Answers that broke after the first byte", ["outcome"], registry=r
        )
        self.other_errors = Counter(
            "gptomni_other_error_responses", "Error responses outside chat completions (those are gptomni_requests)",
            ["status"], registry=r,
        )
        self.pool_reloads = Counter("gptomni_pool_reloads", "Pool file reloads by result", ["result"], registry=r)
        self.prompt_tokens = Counter("gptomni_prompt_tokens", "Estimated prompt tokens", ["model"], registry=r)
        self.completion_tokens = Counter("gptomni_completion_tokens", "Estimated completion tokens", ["model"], registry=r)
        r.register(_PoolCollector(statuses))
        r.register(_PoolModeCollector(pool_mode))
        self._credential_ids: set[str] = set()
        self._api_key_names: set[str] = set()
        self._initialise(list(models))

    def _initialise(self, models: list[str]) -> None:
        for status in REFUSAL_STATUSES:
            self.requests.labels(UNKNOWN_MODEL, status, "false")
        for model in models:
            for stream in STREAM_LABELS:
                for status in ANSWER_STATUSES:
                    self.requests.labels(model, status, stream)
            self.time_to_first_token.labels(model)
            self.prompt_tokens.labels(model)
            self.completion_tokens.labels(model)
        for stream in STREAM_LABELS:
            self.request_duration.labels(stream)
        for outcome in Outcome:
            if outcome is not Outcome.OK:
                self.stream_interruptions.labels(outcome.value)
        for result in POOL_RELOAD_RESULTS:
            self.pool_reloads.labels(result)

    def track_credentials(self, ids: Iterable[str]) -> None:
        """The pool now holds these credentials: their attempt counters exist, others' go."""
        self._credential_ids = _track(self.upstream_attempts, self._credential_ids, set(ids), [o.value for o in Outcome])

    def track_api_key_names(self, names: Iterable[str]) -> None:
        """These API-key names are configured now: their counters exist, others' go (at
        most MAX_KEY_LABELS names, the rest counted as `other`)."""
        ordered = sorted(set(names))
        current = set(ordered[:MAX_KEY_LABELS]) | ({OTHER_KEYS} if len(ordered) > MAX_KEY_LABELS else set())
        known = self._api_key_names
        _track(self.api_key_refusals, known, current, list(KEY_REFUSAL_REASONS))
        for gone in known - current:
            for counter in (self.api_key_tokens, self.api_key_budget_used):
                with contextlib.suppress(KeyError):
                    counter.remove(gone)
        for new in current - known:
            self.api_key_tokens.labels(new)
            self.api_key_budget_used.labels(new)
        self._api_key_names = _track(self.api_key_requests, known, current, list(StatusClass))

    def key_label(self, name: str) -> str:
        return name if name in self._api_key_names else OTHER_KEYS

    def observe_request(self, model: str, status: int | str, stream: bool, seconds: float,
                        api_key: str | None = None) -> None:
        """One finished chat completion, whichever way it ended; `api_key` names the key
        that authenticated it (None: refused before a key matched)."""
        stream_label = "true" if stream else "false"
        self.requests.labels(model, str(status), stream_label).inc()
        self.request_duration.labels(stream_label).observe(seconds)
        if api_key is not None:
            self.api_key_requests.labels(self.key_label(api_key), status_class(status)).inc()


class FailoverMetrics:
    """Failover's attempts as counts and histograms (a FailoverObserver, core/attempt_observer.py)."""

    def __init__(self, metrics: RelayMetrics) -> None:
        self._metrics = metrics

    def slot_waited(self, seconds: float) -> None:
        self._metrics.slot_wait.observe(seconds)

    def failed_over(self) -> None:
        self._metrics.failovers.inc()

    def attempt(self, credential_id: str, attempt: int) -> AttemptObserver:
        return _AttemptMetrics(self._metrics, credential_id)


_NOTHING_AROUND = nullcontext()  # reusable: it holds no state


class _AttemptMetrics:
    __slots__ = ("_credential_id", "_metrics")

    def __init__(self, metrics: RelayMetrics, credential_id: str) -> None:
        self._metrics = metrics
        self._credential_id = credential_id

    def running(self) -> AbstractContextManager[object]:
        return _NOTHING_AROUND

    def first_piece(self, after_seconds: float) -> None:
        self._metrics.upstream_time_to_first_token.observe(after_seconds)

    def succeeded(self) -> None:
        self._metrics.upstream_attempts.labels(self._credential_id, Outcome.OK.value).inc()

    def failed(self, error: UpstreamError, *, answer_started: bool) -> None:
        self._metrics.upstream_attempts.labels(self._credential_id, error.outcome.value).inc()
        if answer_started:
            self._metrics.stream_interruptions.labels(error.outcome.value).inc()

    def closed(self) -> None:
        pass


def status_class(status: int | str) -> StatusClass:
    code = int(status)
    if code >= 500:
        return StatusClass.SERVER
    return StatusClass.OK if code < 400 else StatusClass.CLIENT


def _track(counter: Counter, known: set[str], current: set[str], second_labels: list[str]) -> set[str]:
    for gone in known - current:
        for label in second_labels:
            counter.remove(gone, label)
    for new in current - known:
        for label in second_labels:
            counter.labels(new, label)
    return current
