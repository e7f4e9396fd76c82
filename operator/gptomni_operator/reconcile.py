"""One pass for one GPTOmniCredential: check its cookie, record the verdict, sync its pool."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import logging
import time
from dataclasses import dataclass
from typing import Any

import kopf

from gptomni_common.upstream import Outcome
from gptomni_operator.kube import CookieUnavailable
from gptomni_operator.pool_secret import TargetConflict
from gptomni_operator.spec import CredentialSpec
from gptomni_operator.state import OperatorState
from gptomni_operator.verdict import (
    CHECK_DISABLED,
    SUSPENDED,
    Verdict,
    next_status,
    secret_problem,
    verdict_from_check,
)

log = logging.getLogger(__name__)


ABSENT = "absent"


def cookie_digest(encoded: str | None) -> str:
    """Identifies a cookie Secret value (as stored, base64) without keeping the cookie."""
    return ABSENT if encoded is None else hashlib.sha256(encoded.encode("ascii", "replace")).hexdigest()


@dataclass(frozen=True)
class PassOutcome:
    next_check_in: float
    cookie_key: str
    cookie_digest: str


async def evaluate(state: OperatorState, namespace: str, spec: CredentialSpec, cookie: str | None,
                   problem: CookieUnavailable | None) -> tuple[Verdict, int | None]:
    upstream, _, _ = state.ready()
    if spec.suspend:
        return SUSPENDED, None
    if problem is not None or cookie is None:
        reason, message = (problem.reason, problem.message) if problem else ("SecretNotFound", "no cookie")
        return secret_problem(reason, message), None
    if spec.health_check.disabled:
        return CHECK_DISABLED, None
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


async def check_and_sync(state: OperatorState, body: kopf.Body | dict[str, Any], logger: Any) -> PassOutcome:
    """One pass; says when the next is due and which cookie value it judged."""
    _, kube, writer = state.ready()
    metadata = body["metadata"]
    namespace, name = metadata["namespace"], metadata["name"]
    previous = dict(body.get("status") or {})
    try:
        spec = CredentialSpec.of(body)
        interval = spec.health_check.interval_seconds
    except ValueError as exc:
        spec, interval = None, 300.0
        verdict: Verdict = Verdict(False, "InvalidSpec", str(exc).splitlines()[0])
        latency = None
    digest, key = ABSENT, "cookie"
    if spec is not None:
        key = spec.cookie_secret_ref.key
        cookie, problem = None, None
        try:
            cookie = await kube.read_cookie(namespace, spec.cookie_secret_ref)
            digest = cookie_digest(base64.b64encode(cookie.encode("utf-8")).decode("ascii"))
        except CookieUnavailable as exc:
            problem = exc
        verdict, latency = await evaluate(state, namespace, spec, cookie, problem)
    settings = state.settings
    update = next_status(
        previous, verdict,
        generation=metadata.get("generation"),
        interval_seconds=interval,
        transient_threshold=settings.transient_failure_threshold,
        backoff_base_seconds=settings.failure_backoff_base_seconds,
        jitter_fraction=settings.jitter_fraction,
        latency_ms=latency,
    )
    # Status first: it is the source of truth the pool is derived from, so a restart
    # between the two steps rebuilds the same pool.
    await kube.patch_credential_status(namespace, name, update.status)
    if spec is not None:
        try:
            await writer.sync(namespace, spec.target_secret, overrides={name: update.in_pool})
        except TargetConflict as exc:
            state.metrics.reconcile_errors.labels("target_conflict").inc()
            update.status["conditions"][1].update(status="False", reason="TargetSecretConflict", message=str(exc))
            await kube.patch_credential_status(namespace, name, update.status)
    if update.transitioned:
        kopf.event(body, type=update.effective.event_type, reason=update.effective.reason,
                   message=update.effective.message)
        logger.info(f"verdict: {update.effective.reason} (healthy={update.effective.healthy})")
    return PassOutcome(update.next_check_in, key, digest)
