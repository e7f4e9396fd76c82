"""The judge: one pass for one GPTOmniCredential, from its cookie to its Healthy verdict.

A pass costs one GET (the cookie Secret), one health check, one status write through
/status (read again and retried on 409 Conflict) and, when the verdict changes, one
Event. The pool is not its business: the publisher of the credential's pool Secret
reacts to the new status (publisher.py).
"""

from __future__ import annotations

import asyncio
import logging
import time
from datetime import UTC, datetime
from typing import Any

import kopf

from gptomni_common.upstream import Outcome
from gptomni_operator.cookies import CookieUnavailable, cookie_digest
from gptomni_operator.spec import CredentialSpec
from gptomni_operator.state import OperatorState
from gptomni_operator.verdict import (
    CHECK_DISABLED,
    SUSPENDED,
    StatusUpdate,
    Verdict,
    next_status,
    secret_problem,
    verdict_from_check,
    was_healthy,
)

log = logging.getLogger(__name__)

# A spec the API server admitted but the operator cannot use is looked at again after
# this long (a spec edit wakes the judge at once anyway).
INVALID_SPEC_RECHECK_SECONDS = 300.0


def first_check_in(body: kopf.Body | dict[str, Any], now: datetime | None = None) -> float:
    """Seconds until the first check after (re)start: none before the status's
    nextCheckTime if the verdict is about the current spec; a changed cookie wakes it."""
    status = body.get("status") or {}
    if status.get("observedGeneration") != body["metadata"].get("generation"):
        return 0.0
    if was_healthy(status) and not status.get("cookieDigest"):
        return 0.0  # judged healthy by an operator that kept no digest: say which cookie now
    try:
        due = datetime.fromisoformat(str(status["nextCheckTime"]).replace("Z", "+00:00"))
    except (KeyError, ValueError):
        return 0.0
    return max(0.0, (due - (now or datetime.now(UTC))).total_seconds())


async def _check(state: OperatorState, spec: CredentialSpec, cookie: str) -> tuple[Verdict, int | None]:
    if spec.health_check.disabled:
        return CHECK_DISABLED, None
    upstream = state.running().upstream
    started = time.monotonic()
    try:
        async with asyncio.timeout(spec.health_check.timeout_seconds):
            result = await upstream.check_cookie(cookie)
    except TimeoutError:
        state.metrics.checks.labels(Outcome.TIMEOUT.value).inc()
        return Verdict(False, "UpstreamTimeout", "the health check timed out", transient=True), None
    finally:
        state.metrics.check_duration.observe(time.monotonic() - started)
    state.metrics.checks.labels(result.outcome.value).inc()
    return verdict_from_check(result), result.latency_ms


async def judge(state: OperatorState, body: kopf.Body | dict[str, Any],
                logger: logging.Logger | logging.LoggerAdapter[Any]) -> tuple[float, tuple[str | None]]:
    """One pass; returns the seconds until the next is due, and the digest of the cookie
    it judged (a 1-tuple: None when there was no usable cookie)."""
    running = state.running()
    metadata = body["metadata"]
    # The spec and its generation, read together before any wait (kopf updates `body` live).
    namespace, name, generation = metadata["namespace"], metadata["name"], metadata.get("generation")
    digest: str | None = None
    latency: int | None = None
    try:
        spec: CredentialSpec | None = CredentialSpec.of(body)
    except ValueError as exc:
        spec = None
        verdict = Verdict(False, "InvalidSpec", str(exc).splitlines()[0], failure=False)
    if spec is not None:
        if spec.suspend:
            verdict = SUSPENDED
        else:
            try:
                cookie = await running.kube.read_cookie(namespace, spec.cookie_secret_ref)
            except CookieUnavailable as exc:
                running.cookies.put(namespace, spec.cookie_secret_ref, None)
                verdict = secret_problem(exc.reason, exc.message)
            else:
                running.cookies.put(namespace, spec.cookie_secret_ref, cookie)
                digest = cookie_digest(cookie)
                verdict, latency = await _check(state, spec, cookie)
    interval = spec.health_check.interval_seconds if spec else INVALID_SPEC_RECHECK_SECONDS
    settings = state.settings
    updates: list[StatusUpdate] = []

    def change(previous: dict[str, Any]) -> dict[str, Any]:
        update = next_status(
            previous, verdict,
            generation=generation,
            interval_seconds=interval,
            transient_threshold=settings.transient_failure_threshold,
            backoff_base_seconds=settings.failure_backoff_base_seconds,
            jitter_fraction=settings.jitter_fraction,
            latency_ms=latency,
            cookie_digest=digest,
        )
        updates.append(update)
        return update.status

    written = await running.kube.update_status(
        namespace, name, metadata.get("resourceVersion", ""), dict(body.get("status") or {}), change)
    update = updates[-1]
    if written is not None and update.transitioned:
        kopf.event(body, type=update.effective.event_type, reason=update.effective.reason,
                   message=update.effective.message)
        logger.info(f"verdict: {update.effective.reason} (healthy={update.effective.healthy})")
    return update.next_check_in, (digest,)
