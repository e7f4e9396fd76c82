"""From one health check to the CR's status: verdicts, conditions, the next check time.

Kubernetes condition conventions: `type`, `status` ("True"/"False"/"Unknown"),
`reason` (CamelCase), `message`, `lastTransitionTime` (changes only when `status` does),
`observedGeneration`.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from gptomni_common.upstream import Outcome
from gptomni_common.upstream.client import CheckResult


@dataclass(frozen=True)
class Verdict:
    healthy: bool
    reason: str
    message: str
    transient: bool = False  # a network-level failure that does not prove the cookie bad

    @property
    def event_type(self) -> str:
        return "Normal" if self.healthy else "Warning"


HEALTHY = Verdict(True, "CheckPassed", "GPT-Omni answered the health-check prompt")
CHECK_DISABLED = Verdict(True, "CheckDisabled", "health checks are disabled; the cookie is trusted as is")
SUSPENDED = Verdict(False, "Suspended", "spec.suspend is true; the cookie is kept out of the pool")

_BY_OUTCOME = {
    Outcome.UNAUTHORIZED: ("CookieRejected", False),
    Outcome.RATE_LIMITED: ("RateLimited", False),
    Outcome.CHALLENGE: ("Challenge", False),
    Outcome.TIMEOUT: ("UpstreamTimeout", True),
    Outcome.ERROR: ("UpstreamError", True),
}


def verdict_from_check(result: CheckResult) -> Verdict:
    if result.outcome is Outcome.OK:
        return HEALTHY
    reason, transient = _BY_OUTCOME[result.outcome]
    return Verdict(False, reason, result.detail, transient=transient)


def secret_problem(reason: str, message: str) -> Verdict:
    return Verdict(False, reason, message)


def condition(status: dict[str, Any], kind: str) -> dict[str, Any] | None:
    for item in status.get("conditions") or []:
        if item.get("type") == kind:
            return item
    return None


def was_healthy(status: dict[str, Any]) -> bool | None:
    found = condition(status, "Healthy")
    if found is None or found.get("status") == "Unknown":
        return None
    return found.get("status") == "True"


@dataclass(frozen=True)
class StatusUpdate:
    status: dict[str, Any]
    in_pool: bool
    transitioned: bool
    effective: Verdict
    next_check_in: float


def _rfc3339(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _condition(kind: str, ok: bool, reason: str, message: str, previous: dict[str, Any] | None,
               now: datetime, generation: int | None) -> dict[str, Any]:
    status = "True" if ok else "False"
    changed = previous is None or previous.get("status") != status
    return {
        "type": kind,
        "status": status,
        "reason": reason,
        "message": message,
        "lastTransitionTime": _rfc3339(now) if changed else previous.get("lastTransitionTime", _rfc3339(now)),
        "observedGeneration": generation,
    }


def next_status(
    previous: dict[str, Any],
    verdict: Verdict,
    *,
    generation: int | None,
    interval_seconds: float,
    transient_threshold: int,
    backoff_base_seconds: float,
    jitter_fraction: float,
    latency_ms: int | None,
    now: datetime | None = None,
    rng: random.Random | None = None,
) -> StatusUpdate:
    now = now or datetime.now(UTC)
    rng = rng or random.Random()
    failures = 0 if verdict.healthy else int(previous.get("consecutiveFailures") or 0) + 1
    effective = verdict
    before = was_healthy(previous)
    if verdict.transient and before is not None and failures < transient_threshold:
        # One flaky check does not flip a verdict: keep the previous one, say why.
        old = condition(previous, "Healthy") or {}
        effective = Verdict(before, old.get("reason", "CheckPassed"),
                            f"{verdict.reason} ({failures}/{transient_threshold}) kept the previous verdict: {verdict.message}",
                            transient=True)
    if verdict.healthy or verdict.reason in ("Suspended",):
        delay = interval_seconds
    else:
        # Re-check sooner than the interval after a failure, backing off towards it.
        delay = min(interval_seconds, backoff_base_seconds * 2 ** max(0, failures - 1))
    delay *= 1 + rng.uniform(-jitter_fraction, jitter_fraction)

    healthy_condition = _condition("Healthy", effective.healthy, effective.reason, effective.message,
                                   condition(previous, "Healthy"), now, generation)
    ready_message = "in the pool" if effective.healthy else f"kept out of the pool: {effective.reason}"
    ready_condition = _condition("Ready", effective.healthy, "InPool" if effective.healthy else "NotInPool",
                                 ready_message, condition(previous, "Ready"), now, generation)
    status: dict[str, Any] = {
        "conditions": [healthy_condition, ready_condition],
        "consecutiveFailures": failures,
        "lastCheckTime": _rfc3339(now),
        "nextCheckTime": _rfc3339(now + timedelta(seconds=delay)),
        "observedGeneration": generation,
    }
    if latency_ms is not None:
        status["lastLatencyMs"] = latency_ms
    return StatusUpdate(
        status=status,
        in_pool=effective.healthy,
        transitioned=before != effective.healthy or (condition(previous, "Healthy") or {}).get("reason") != effective.reason,
        effective=effective,
        next_check_in=delay,
    )
