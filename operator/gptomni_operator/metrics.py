"""Operator metrics, served on their own port (GPTOMNI_OPERATOR_METRICS_PORT).

Every labelled series a dashboard or an alert reads exists from the start at 0, so
`rate()` sees its first event and a panel shows 0, not "No data". The pool Secret's
namespace is `secret_namespace`: a `namespace` label would collide with the one
Prometheus gives every target (the operator pod's) and be renamed `exported_namespace`.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from gptomni_common.upstream import Outcome

CHECK_BUCKETS = (0.1, 0.25, 0.5, 1, 2, 4, 8, 15, 30, 60)
SECRET_WRITE_RESULTS = ("created", "updated", "unchanged")
RECONCILE_STAGES = ("check", "publish", "target_conflict")
CONFLICT_RESOURCES = ("credential", "api_key", "secret")


class OperatorMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.checks = Counter("gptomni_operator_checks", "Cookie health checks by result", ["result"], registry=r)
        self.check_duration = Histogram(
            "gptomni_operator_check_duration_seconds", "Health-check latency", buckets=CHECK_BUCKETS, registry=r
        )
        self.healthy_credentials = Gauge(
            "gptomni_operator_healthy_credentials", "Credentials written to each pool Secret",
            ["secret_namespace", "secret"], registry=r,
        )
        self.published_api_keys = Gauge(
            "gptomni_operator_api_keys", "API keys published into each key-set Secret",
            ["secret_namespace", "secret"], registry=r,
        )
        self.secret_writes = Counter(
            "gptomni_operator_secret_writes", "Pool and key-set Secret syncs by result (created/updated/unchanged)", ["result"],
            registry=r,
        )
        self.reconcile_errors = Counter(
            "gptomni_operator_reconcile_errors", "Failures while checking or writing", ["stage"], registry=r
        )
        self.conflicts = Counter(
            "gptomni_operator_conflicts", "Writes refused with 409 Conflict (another writer came first) and retried",
            ["resource"], registry=r,
        )
        self.up = Gauge("gptomni_operator_up", "1 while the operator runs", registry=r)
        for outcome in Outcome:
            self.checks.labels(outcome.value)
        for result in SECRET_WRITE_RESULTS:
            self.secret_writes.labels(result)
        for stage in RECONCILE_STAGES:
            self.reconcile_errors.labels(stage)
        for resource in CONFLICT_RESOURCES:
            self.conflicts.labels(resource)
