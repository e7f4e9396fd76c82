"""RelayState: the one place that holds the relay's mutable state.

Everything a request needs (settings, API keys, the pool, the answer source with its
upstream client, metrics) hangs off one object stored on `app.state.relay`, built once
at start-up; nothing lives in module globals.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import socket
from dataclasses import dataclass, field

from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider

from gptomni_common.upstream import Outcome, UpstreamClient, UpstreamTimeouts
from gptomni_relay.api_keys import ApiKey, api_key
from gptomni_relay.core.failover import AnswerSource, FailoverPolicy
from gptomni_relay.core.pool import Credential, CredentialPool, Pool
from gptomni_relay.core.pool_sources import MAX_POOL_FILE_BYTES, credentials_from_env, credentials_from_file
from gptomni_relay.core.shared_pool import SharedCredentialPool
from gptomni_relay.core.shared_store import SharedStore, printable_url
from gptomni_relay.file_watch import FileWatcher
from gptomni_relay.metrics import RelayMetrics
from gptomni_relay.settings import DEMO_API_KEY, MAX_API_KEYS_FILE_BYTES, RelaySettings

log = logging.getLogger(__name__)


class ConfigurationError(RuntimeError):
    """The relay cannot start as configured; the message says what to change."""


@dataclass
class RelayState:
    settings: RelaySettings
    api_keys: list[ApiKey]
    pool: Pool
    upstream: UpstreamClient
    metrics: RelayMetrics
    tracer_provider: TracerProvider | None
    answers: AnswerSource
    static_credentials: list[Credential]
    watchers: list[FileWatcher] = field(default_factory=list)
    tasks: list[asyncio.Task[None]] = field(default_factory=list)

    def load_pool_file(self, raw: bytes) -> None:
        credentials = credentials_from_file(raw, self.settings.default_max_concurrency)
        self.install_pool([*self.static_credentials, *credentials])
        log.info("credentials file loaded", extra={"credentials": [c.id for c in credentials]})

    def load_api_keys_file(self, raw: bytes) -> None:
        """A key removed from the file stops working at the next poll: revocation needs no restart."""
        keys = self.settings.api_keys_with_file(raw)
        if not keys:
            log.warning("the API key file lists no key: every request is refused until one is added")
        self.install_api_keys(keys)
        log.info("API keys loaded", extra={"keys": len(keys)})  # how many, never which

    def install_pool(self, credentials: list[Credential]) -> None:
        self.pool.replace(credentials)
        self.metrics.track_credentials(credential.id for credential in credentials)

    def install_api_keys(self, keys: list[str]) -> None:
        self.api_keys = [api_key(key) for key in keys]
        self.metrics.track_api_key_names(key.name for key in self.api_keys)

    async def start(self) -> None:
        for watcher in self.watchers:
            watcher.check_now()
            self.tasks.append(asyncio.create_task(watcher.run(), name=f"watch {watcher.path}"))
        await self.pool.start()
        if self.settings.eject_probe_seconds > 0:
            self.tasks.append(asyncio.create_task(self._probe_ejected_forever(), name="ejected-prober"))

    async def stop(self) -> None:
        for task in self.tasks:
            task.cancel()
        for task in self.tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self.tasks.clear()
        await self.pool.stop()
        await self.upstream.aclose()
        if self.tracer_provider is not None:
            self.tracer_provider.shutdown()

    async def probe_ejected(self) -> None:
        """Give each ejected credential one real check; a success puts it back in rotation."""
        for credential in self.pool.ejected_credentials():
            result = await self.upstream.check_cookie(credential.cookie)
            self.metrics.upstream_attempts.labels(credential.id, result.outcome.value).inc()
            if result.outcome is Outcome.OK:
                self.pool.reinstate(credential.id)
                log.info("ejected credential passed its probe; back in rotation", extra={"credential": credential.id})

    async def _probe_ejected_forever(self) -> None:
        while True:
            await asyncio.sleep(self.settings.eject_probe_seconds)
            try:
                await self.probe_ejected()
            except Exception:
                log.exception("probing ejected credentials failed")


def resolve_api_keys(settings: RelaySettings) -> list[str]:
    try:
        keys = settings.load_api_keys()
    except (OSError, ValueError) as exc:
        raise ConfigurationError(f"cannot read GPTOMNI_API_KEYS_FILE: {exc}") from None
    if not keys:
        if settings.demo:
            return [f"demo:{DEMO_API_KEY}"]
        raise ConfigurationError(
            "no API key configured: set GPTOMNI_API_KEYS (comma list) or GPTOMNI_API_KEYS_FILE, "
            "or run the local demo with --demo"
        )
    return keys


def build_pool(settings: RelaySettings) -> Pool:
    """In-process, or shared by every replica through Redis when GPTOMNI_REDIS_URL is set."""
    if settings.redis_url is None:
        # Without a shared store each replica keeps to its share of every cookie's limit, so
        # that the replicas together never exceed it (GPTOMNI_REPLICAS: the most there can be).
        return CredentialPool(settings.cooldown_base_seconds, settings.cooldown_max_seconds,
                              limit=lambda credential: max(1, credential.max_concurrency // settings.replicas))
    try:
        password = settings.load_redis_password()
    except (OSError, ValueError) as exc:
        raise ConfigurationError(f"cannot read GPTOMNI_REDIS_PASSWORD_FILE: {exc}") from None
    try:
        store = SharedStore.connect(settings.redis_url, password, settings.redis_timeout_seconds,
                                    settings.redis_key_prefix, settings.pool_lease_seconds)
    except (OSError, ValueError) as exc:  # the URL's TLS options or files
        raise ConfigurationError(f"GPTOMNI_REDIS_URL: {exc}") from None
    return SharedCredentialPool(
        store,
        replica_id=f"{socket.gethostname()}-{secrets.token_hex(3)}",
        expected_replicas=settings.replicas,
        lease_seconds=settings.pool_lease_seconds,
        sync_seconds=min(0.5, settings.pool_lease_seconds / 4),
        cooldown_base_seconds=settings.cooldown_base_seconds,
        cooldown_max_seconds=settings.cooldown_max_seconds,
        store_address=printable_url(settings.redis_url),
    )


def build_state(settings: RelaySettings, tracer_provider: TracerProvider | None) -> RelayState:
    keys = resolve_api_keys(settings)
    pool = build_pool(settings)
    static = credentials_from_env(settings.credentials, settings.default_max_concurrency)
    upstream = UpstreamClient(
        settings.upstream_url,
        UpstreamTimeouts(
            connect=settings.connect_timeout_seconds,
            first_byte=settings.first_byte_timeout_seconds,
            idle=settings.idle_timeout_seconds,
        ),
        max_connections=settings.max_upstream_connections,
    )
    metrics = RelayMetrics(pool.statuses, pool_mode=lambda: (pool.mode, pool.store_up), models=settings.models)
    answers = AnswerSource(
        pool,
        upstream,
        metrics,
        FailoverPolicy(settings.max_attempts, settings.failover_budget_seconds, settings.acquire_timeout_seconds,
                       settings.max_answer_chars, settings.max_answer_seconds),
        tracer_provider.get_tracer("gptomni_relay") if tracer_provider is not None else trace.NoOpTracer(),
    )
    relay = RelayState(
        settings=settings,
        api_keys=[],
        pool=pool,
        upstream=upstream,
        metrics=metrics,
        tracer_provider=tracer_provider,
        answers=answers,
        static_credentials=static,
    )
    relay.install_api_keys(keys)
    relay.install_pool(static)
    if settings.credentials_file is not None:
        relay.watchers.append(FileWatcher(
            settings.credentials_file, "credentials", settings.credentials_poll_seconds, MAX_POOL_FILE_BYTES,
            load=relay.load_pool_file, on_result=lambda result: metrics.pool_reloads.labels(result).inc(),
        ))
    if settings.api_keys_file is not None:
        relay.watchers.append(FileWatcher(
            settings.api_keys_file, "API key", settings.credentials_poll_seconds, MAX_API_KEYS_FILE_BYTES,
            load=relay.load_api_keys_file,
        ))
    return relay
