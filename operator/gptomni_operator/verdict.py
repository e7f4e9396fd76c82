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
    # An unhealthy verdict that counts as a failure: re-checked sooner, counted in
    # consecutiveFailures. A suspended credential has not failed.
    failure: bool = True

    @property
    def event_type(self) -> str:
        return "Normal" if self.healthy else "Warning"

    @property
    def failed(self) -> bool:
        return not self.healthy and self.failure


HEALTHY = Verdict(True, "CheckPassed", "GPT-Omni answered the health-check prompt")
CHECK_DISABLED = Verdict(True, "CheckDisabled", "health checks are disabled; the cookie is trusted as is")
SUSPENDED = Verdict(False, "Suspended", "spec.suspend is true; the cookie is kept out of the pool", failure=False)

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
    status: dict[str, Any]  # the fields to merge into the status
    transitioned: bool
    effective: Verdict
    next_check_in: float


def rfc3339(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def make_condition(kind: str, ok: bool, reason: str, message: str, previous: dict[str, Any] | None,
                   now: datetime, generation: int | None) -> dict[str, Any]:
    status = "True" if ok else "False"
    changed = previous is None or previous.get("status") != status
    return {
        "type": kind,
        "status": status,
        "reason": reason,
        "message": message,
        "lastTransitionTime": rfc3339(now) if changed else previous.get("lastTransitionTime", rfc3339(now)),
        "observedGeneration": generation,
    }


def with_condition(conditions: list[dict[str, Any]] | None, new: dict[str, Any]) -> list[dict[str, Any]]:
    """The conditions with `new` replacing the one of its type (a status patch replaces the whole list)."""
    kept = [dict(item) for item in conditions or [] if item.get("type") != new["type"]]
    return sorted([*kept, new], key=lambda item: CONDITION_ORDER.get(item.get("type"), len(CONDITION_ORDER)))


CONDITION_ORDER = {"Healthy": 0, "Ready": 1}


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
    cookie_digest: str | None,
    now: datetime | None = None,
    rng: random.Random | None = None,
) -> StatusUpdate:
    """The judge's part of the status (Healthy and the check fields); Ready is the publisher's."""
    now = now or datetime.now(UTC)
    rng = rng or random.Random()
    failures = int(previous.get("consecutiveFailures") or 0) + 1 if verdict.failed else 0
    effective = verdict
    before = was_healthy(previous)
    if verdict.transient and before is not None and failures < transient_threshold:
        # One flaky check does not flip a verdict: keep the previous one, say why.
        old = condition(previous, "Healthy") or {}
        effective = Verdict(before, old.get("reason", "CheckPassed"),
                            f"{verdict.reason} ({failures}/{transient_threshold}) kept the previous verdict: {verdict.message}",
                            transient=True)
    if verdict.failed:
        # Re-check sooner than the interval after a failure, backing off towards it.
        delay = min(interval_seconds, backoff_base_seconds * 2 ** max(0, failures - 1))
    else:
        delay = interval_seconds
    delay *= 1 + rng.uniform(-jitter_fraction, jitter_fraction)

    healthy_condition = make_condition("Healthy", effective.healthy, effective.reason, effective.message,
                                       condition(previous, "Healthy"), now, generation)
    status: dict[str, Any] = {
        "conditions": with_condition(previous.get("conditions"), healthy_condition),
        "consecutiveFailures": failures,
        "lastCheckTime": rfc3339(now),
        "nextCheckTime": rfc3339(now + timedelta(seconds=delay)),
        "observedGeneration": generation,
        "cookieDigest": cookie_digest,  # None removes it: no usable cookie was judged
    }
    if latency_ms is not None:
        status["lastLatencyMs"] = latency_ms
    return StatusUpdate(
        status=status,
        transitioned=before != effective.healthy or (condition(previous, "Healthy") or {}).get("reason") != effective.reason,
        effective=effective,
        next_check_in=delay,
    )
