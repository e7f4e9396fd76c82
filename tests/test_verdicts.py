"""How the operator turns checks into status: transient failures, backoff, transitions."""

from __future__ import annotations

import random
from datetime import UTC, datetime

from gptomni_operator.judge import first_check_in
from gptomni_operator.verdict import HEALTHY, SUSPENDED, Verdict, condition, next_status

NOW = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)
TIMEOUT = Verdict(False, "UpstreamTimeout", "timed out", transient=True)
REJECTED = Verdict(False, "CookieRejected", "401")


def step(previous: dict, verdict: Verdict, threshold: int = 3):  # noqa: ANN201
    return next_status(previous, verdict, generation=2, interval_seconds=300, transient_threshold=threshold,
                       backoff_base_seconds=30, jitter_fraction=0.1, latency_ms=12, cookie_digest="d1", now=NOW,
                       rng=random.Random(0))


def test_transient_failures_keep_the_verdict_until_the_threshold() -> None:
    healthy = step({}, HEALTHY)
    assert healthy.effective.healthy and healthy.transitioned
    first = step(healthy.status, TIMEOUT)
    assert first.effective.healthy and not first.transitioned and first.status["consecutiveFailures"] == 1
    assert "kept the previous verdict" in first.status["conditions"][0]["message"]
    second = step(first.status, TIMEOUT)
    assert second.effective.healthy and second.status["consecutiveFailures"] == 2
    third = step(second.status, TIMEOUT)
    assert not third.effective.healthy and third.transitioned
    assert third.status["conditions"][0]["reason"] == "UpstreamTimeout"


def test_rejection_is_immediate_and_transition_time_moves_only_on_change() -> None:
    healthy = step({}, HEALTHY)
    rejected = step(healthy.status, REJECTED)
    assert not rejected.effective.healthy and rejected.transitioned
    again = next_status(rejected.status, REJECTED, generation=2, interval_seconds=300, transient_threshold=3,
                        backoff_base_seconds=30, jitter_fraction=0.1, latency_ms=1, cookie_digest="d1",
                        now=datetime(2026, 11, 25, 13, 0, tzinfo=UTC))
    assert not again.transitioned
    assert again.status["conditions"][0]["lastTransitionTime"] == rejected.status["conditions"][0]["lastTransitionTime"]
    assert again.status["conditions"][0]["observedGeneration"] == 2


def test_failures_recheck_sooner_with_backoff_up_to_the_interval() -> None:
    status: dict = {}
    delays = []
    for _ in range(6):
        update = step(status, REJECTED)
        delays.append(update.next_check_in)
        status = update.status
    assert delays[0] < delays[1] < delays[2] < delays[3]
    assert 0.9 * 30 <= delays[0] <= 1.1 * 30 and max(delays) <= 300 * 1.1
    assert 270 <= step({}, HEALTHY).next_check_in <= 330  # healthy: the interval, with jitter


def test_suspension_is_no_failure_and_keeps_the_publishers_ready_condition() -> None:
    ready = {"type": "Ready", "status": "True", "reason": "InPool", "message": "published", "observedGeneration": 2}
    previous = {**step({}, HEALTHY).status, "consecutiveFailures": 2}
    previous["conditions"] = [*previous["conditions"], ready]
    suspended = step(previous, SUSPENDED)
    assert suspended.status["consecutiveFailures"] == 0 and 270 <= suspended.next_check_in <= 330
    assert condition(suspended.status, "Healthy")["reason"] == "Suspended"
    assert condition(suspended.status, "Ready") == ready  # Ready is the publisher's to change
    assert [c["type"] for c in suspended.status["conditions"]] == ["Healthy", "Ready"]


def test_a_restarted_judge_waits_for_next_check_time_unless_the_spec_is_newer() -> None:
    status = step({}, HEALTHY).status  # observedGeneration 2, next check ~5 minutes after NOW
    body = {"metadata": {"generation": 2}, "status": status}
    assert 270 <= first_check_in(body, now=NOW) <= 330
    assert first_check_in({"metadata": {"generation": 3}, "status": status}, now=NOW) == 0
    assert first_check_in({"metadata": {"generation": 2}}, now=NOW) == 0
