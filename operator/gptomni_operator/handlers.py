"""kopf handlers for GPTOmniCredential, registered into a given registry.

- The **judge** (a daemon per credential, judge.py) checks the cookie and writes the
  Healthy verdict, then sleeps until the next check is due or something wakes it: a spec
  change (a new generation) or a cookie Secret whose value differs from the one judged.
- The **publisher** of each (namespace, pool Secret) (publisher.py) writes the pool from
  the `pool_members` index whenever a member's part in it changes, and writes Ready.
- Two indexes carry what both need, so neither lists or re-reads credentials:
  `pool_members` (namespace, pool Secret) -> members; `cookie_uses` (namespace, cookie
  Secret) -> the credentials that read it, with the digest each judged.
"""

from __future__ import annotations

import asyncio
import logging
import random
from typing import Any

import kopf
from prometheus_client import start_http_server

from gptomni_operator import FINALIZER, GROUP, PLURAL, VERSION
from gptomni_operator.judge import first_check_in, judge
from gptomni_operator.members import CookieUse, Member, credential_id
from gptomni_operator.memo import CredentialMemo
from gptomni_operator.publisher import MembersIndex, secret_identity
from gptomni_operator.spec import SecretKeyRef
from gptomni_operator.state import OperatorState

log = logging.getLogger(__name__)

CRD = (GROUP, VERSION, PLURAL)


async def _sleep_until(delay: float, wake: asyncio.Event, stopped: kopf.DaemonStopped) -> None:
    waiters = {asyncio.ensure_future(wake.wait()), asyncio.ensure_future(stopped.wait())}
    try:
        await asyncio.wait(waiters, timeout=delay, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for waiter in waiters:
            waiter.cancel()


def register(registry: kopf.OperatorRegistry, state: OperatorState) -> None:
    config = state.settings
    default_target = config.default_target_secret

    @kopf.on.startup(registry=registry, id="start")
    async def start(settings: kopf.OperatorSettings, **_: Any) -> None:
        settings.persistence.finalizer = FINALIZER
        settings.posting.level = logging.INFO
        settings.watching.server_timeout = 300
        if config.peering:
            settings.peering.name = config.peering
            settings.peering.mandatory = True
            # kopf pauses all operators of a peering that share a priority: draw one.
            settings.peering.priority = (config.peering_priority if config.peering_priority is not None
                                         else random.SystemRandom().randint(1, 2**31 - 1))
        await state.start()
        if config.peering:
            # Without its peering object kopf idles silently, every replica alike.
            missing = await state.running().kube.missing_peerings(config.peering, config.namespaces)
            if missing:
                await state.stop()  # kopf runs no clean-up after a failed start-up
                raise kopf.PermanentError(
                    f"peering {config.peering!r} is not set up: no {', '.join(missing)}. Install kopf's peering "
                    "CRDs (kopf.dev/v1) and create it, or run without --peering")
        if config.metrics_port:
            start_http_server(config.metrics_port, registry=state.metrics.registry)
        state.metrics.up.set(1)

    @kopf.on.cleanup(registry=registry, id="stop")
    async def stop(**_: Any) -> None:
        state.metrics.up.set(0)
        await state.stop()

    @kopf.on.login(registry=registry, id="login")
    def login(**kwargs: Any) -> kopf.ConnectionInfo | None:
        return kopf.login_with_service_account(**kwargs) or kopf.login_with_kubeconfig(**kwargs)

    @kopf.index(*CRD, registry=registry, id="pool_members")
    def pool_members(body: kopf.Body, **_: Any) -> dict[tuple[str, str], Member]:
        member = Member.of(body, default_target)
        return {(member.namespace, member.target): member}

    @kopf.index(*CRD, registry=registry, id="cookie_uses")
    def cookie_uses(body: kopf.Body, memo: CredentialMemo, **_: Any) -> dict[tuple[str, str], CookieUse]:
        member = Member.of(body, default_target)
        if member.cookie_ref is None:
            return {}
        use = CookieUse(member.cookie_ref.key, member.cookie_digest, member.suspended, memo)
        return {(member.namespace, member.cookie_ref.name): use}

    def publish_soon(namespace: str, targets: set[str | None], members: MembersIndex) -> None:
        for target in targets - {None}:
            state.running().publishers.of(namespace, target, members).request()  # type: ignore[arg-type]

    @kopf.on.event(*CRD, registry=registry, id="credential_changed")
    async def credential_changed(type: str | None, body: kopf.Body, memo: CredentialMemo,
                                 pool_members: MembersIndex, **_: Any) -> None:
        member = Member.of(body, default_target)
        before = memo.member
        if type == "DELETED":
            publish_soon(member.namespace, {member.target, member.published_target}, pool_members)
            return
        if memo.seen_generation is not None and member.generation != memo.seen_generation:
            log.debug("spec changed: checking now", extra={"credential": member.id, "generation": member.generation})
            memo.wake.set()  # a spec change is judged at once
        memo.seen_generation = member.generation
        if before is None or before.publication() != member.publication():
            # The old target too: a credential moved elsewhere leaves its old pool.
            publish_soon(member.namespace, {member.target, member.published_target,
                                            before.target if before else None}, pool_members)
        memo.member = member

    @kopf.on.event("v1", "secrets", registry=registry, id="secret_changed")
    async def secret_changed(type: str | None, namespace: str, name: str, body: kopf.Body,
                             cookie_uses: kopf.Index[tuple[str, str], CookieUse],
                             pool_members: MembersIndex, **_: Any) -> None:
        data = None if type == "DELETED" else dict(body.get("data") or {})
        if (namespace, name) in cookie_uses:
            cookies = state.running().cookies
            for use in cookie_uses[(namespace, name)]:
                ref = SecretKeyRef(name=name, key=use.key)
                digest = cookies.observe(namespace, ref, data)
                if not use.suspended:
                    use.memo.cookie_seen(digest, use.judged_digest)
        publisher = state.running().publishers.known(namespace, name)
        if publisher is not None:
            metadata = body.get("metadata") or {}
            seen = None if data is None else secret_identity(metadata.get("labels"), metadata.get("annotations"))
            if seen != publisher.seen:  # someone else edited, replaced or deleted the pool
                publisher.members = pool_members
                publisher.request()

    @kopf.daemon(*CRD, registry=registry, id="judge", cancellation_timeout=10)
    async def judge_loop(body: kopf.Body, memo: CredentialMemo, stopped: kopf.DaemonStopped,
                         logger: logging.Logger, **_: Any) -> None:
        loop = asyncio.get_running_loop()
        due = loop.time() + first_check_in(body)
        while not stopped:
            await _sleep_until(max(0.0, due - loop.time()), memo.wake, stopped)
            if stopped:
                break
            memo.wake.clear()
            memo.pass_started()
            judged = None
            try:
                delay, judged = await judge(state, body, logger)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the API blipped: try again soon, never die
                state.metrics.reconcile_errors.labels("check").inc()
                logger.warning(f"check failed, retrying: {type(exc).__name__}: {exc}")
                delay = config.failure_backoff_base_seconds
            finally:
                memo.pass_ended(judged)
            due = loop.time() + delay

    @kopf.on.delete(*CRD, registry=registry, id="remove_from_pool")
    async def remove_from_pool(body: kopf.Body, pool_members: MembersIndex, **_: Any) -> None:
        member = Member.of(body, default_target)
        for target in {member.target, member.published_target} - {None}:
            try:
                published = await state.running().publishers.of(member.namespace, target, pool_members).publish()  # type: ignore[arg-type]
            except Exception as exc:
                raise kopf.TemporaryError(f"could not update pool Secret {target}: {exc}", delay=2) from exc
            if credential_id(member.namespace, member.name) in published.ids:
                raise kopf.TemporaryError(f"still in pool Secret {target}", delay=1)
