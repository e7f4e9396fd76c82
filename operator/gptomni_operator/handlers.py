"""kopf handlers for GPTOmniCredential, registered into a given registry.

Each credential gets a daemon that checks its cookie, records the verdict and syncs
its pool Secret, then sleeps until the next check is due, or until something wakes it:
a spec change, or a change of the cookie Secret it references (found through a kopf
index from Secret to the daemons' wake-up events).
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import kopf
from prometheus_client import start_http_server

from gptomni_common.upstream import UpstreamClient
from gptomni_operator import FINALIZER, GROUP, PLURAL, VERSION
from gptomni_operator.kube import KubeApi, make_api_client
from gptomni_operator.pool_secret import PoolSecretWriter
from gptomni_operator.reconcile import check_and_sync, cookie_digest
from gptomni_operator.spec import CredentialSpec
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

    @kopf.on.startup(registry=registry, id="start")
    async def start(settings: kopf.OperatorSettings, **_: Any) -> None:
        settings.persistence.finalizer = FINALIZER
        settings.posting.level = logging.INFO
        settings.watching.server_timeout = 300
        if config.peering:
            settings.peering.name = config.peering
            settings.peering.mandatory = True
        state.upstream = UpstreamClient(config.upstream_url)
        state.kube = KubeApi(await make_api_client(config))
        state.writer = PoolSecretWriter(state.kube, state.metrics)
        if config.metrics_port:
            start_http_server(config.metrics_port, registry=state.metrics.registry)
        state.metrics.up.set(1)

    @kopf.on.cleanup(registry=registry, id="stop")
    async def stop(**_: Any) -> None:
        state.metrics.up.set(0)
        if state.upstream is not None:
            await state.upstream.aclose()
        if state.kube is not None:
            await state.kube.close()

    @kopf.on.login(registry=registry, id="login")
    def login(**kwargs: Any) -> kopf.ConnectionInfo | None:
        if config.kube_server:
            return kopf.ConnectionInfo(server=config.kube_server, insecure=True, scheme="Bearer",
                                       token=config.kube_token)
        return kopf.login_with_service_account(**kwargs) or kopf.login_with_kubeconfig(**kwargs)

    @kopf.index(*CRD, registry=registry, id="credentials_by_cookie_secret")
    def credentials_by_cookie_secret(namespace: str, spec: kopf.Spec, memo: kopf.Memo, **_: Any) -> dict[Any, Any]:
        ref = (spec.get("cookieSecretRef") or {}).get("name")
        return {(namespace, ref): memo} if ref else {}

    @kopf.on.event("v1", "secrets", registry=registry, id="cookie_secret_changed")
    def cookie_secret_changed(type: str | None, namespace: str, name: str, body: kopf.Body,
                              credentials_by_cookie_secret: kopf.Index[Any, Any], **_: Any) -> None:
        for memo in credentials_by_cookie_secret.get((namespace, name), []):
            if getattr(memo, "wake", None) is None:
                continue
            key = getattr(memo, "cookie_key", "cookie")
            memo.seen_digest = cookie_digest(None if type == "DELETED" else (body.get("data") or {}).get(key))
            memo.wake.set()

    @kopf.daemon(*CRD, registry=registry, id="health_loop", cancellation_timeout=10)
    async def health_loop(body: kopf.Body, memo: kopf.Memo, stopped: kopf.DaemonStopped,
                          logger: logging.Logger, **_: Any) -> None:
        loop = asyncio.get_running_loop()
        memo.wake = asyncio.Event()
        memo.spec_changed = False
        due = loop.time()
        while not stopped:
            # A watch (re)start replays ADDED events for Secrets already judged: only a
            # value different from the one last checked counts as a change.
            secret_changed = getattr(memo, "seen_digest", None) not in (None, getattr(memo, "cookie_digest", None))
            if loop.time() >= due or memo.spec_changed or secret_changed:
                memo.spec_changed = False
                try:
                    outcome = await check_and_sync(state, body, logger)
                    memo.cookie_key, memo.cookie_digest = outcome.cookie_key, outcome.cookie_digest
                    due = loop.time() + outcome.next_check_in
                except (kopf.TemporaryError, asyncio.CancelledError):
                    raise
                except Exception as exc:  # the API blipped: try again soon, never die
                    state.metrics.reconcile_errors.labels("check").inc()
                    logger.warning(f"reconcile failed, retrying: {type(exc).__name__}: {exc}")
                    due = loop.time() + config.failure_backoff_base_seconds
            memo.wake.clear()
            await _sleep_until(max(0.0, due - loop.time()), memo.wake, stopped)

    @kopf.on.update(*CRD, field="spec", registry=registry, id="spec_changed")
    async def spec_changed(namespace: str, name: str, old: Any, new: Any, memo: kopf.Memo, **_: Any) -> None:
        if getattr(memo, "wake", None) is not None:
            memo.spec_changed = True
            memo.wake.set()
        old_target = (old or {}).get("targetSecret", "gptomni-credentials")
        new_target = (new or {}).get("targetSecret", "gptomni-credentials")
        if old_target != new_target:
            _, _, writer = state.ready()
            await writer.sync(namespace, old_target, overrides={name: False})

    @kopf.on.delete(*CRD, registry=registry, id="remove_from_pool")
    async def remove_from_pool(namespace: str, name: str, body: kopf.Body, **_: Any) -> None:
        _, _, writer = state.ready()
        try:
            target = CredentialSpec.of(body).target_secret
        except ValueError:
            return
        await writer.sync(namespace, target, overrides={name: False})
