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
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from opentelemetry.sdk.trace import TracerProvider

from gptomni_common.api_key_set import KeySetDocument, parse_key_set
from gptomni_common.upstream import Outcome, UpstreamClient, UpstreamTimeouts
from gptomni_relay.api_keys import (
    MAX_API_KEYS_FILE_BYTES,
    ApiKey,
    KeyRing,
    api_key,
    read_static_keys,
    static_keys_with_file,
)
from gptomni_relay.core.attempt_observer import BothObservers, FailoverObserver
from gptomni_relay.core.byte_budget import ByteBudget
from gptomni_relay.core.failover import AnswerSource, FailoverPolicy
from gptomni_relay.core.key_limits import KeyLimiter, LocalCounts
from gptomni_relay.core.key_limits_store import StoreCounts
from gptomni_relay.core.pool import Credential, CredentialPool, Pool
from gptomni_relay.core.pool_sources import MAX_POOL_FILE_BYTES, credentials_from_env, credentials_from_file
from gptomni_relay.core.shaping.schemas import SchemaChecks
from gptomni_relay.core.shared_pool import SharedCredentialPool
from gptomni_relay.core.shared_store import SharedStore, printable_url
from gptomni_relay.file_watch import FileWatcher, read_bounded
from gptomni_relay.infra import redis_connection
from gptomni_relay.metrics import FailoverMetrics, RelayMetrics
from gptomni_relay.settings import DEMO_API_KEY, RelaySettings
from gptomni_relay.tracing import FailoverSpans

log = logging.getLogger(__name__)

# Verdicts on client JSON schemas (tool parameters, JSON output formats), shared by every
# surface's request reader: a pure function's results, bounded (core/shaping/schemas.py).
SCHEMA_CHECKS = SchemaChecks()
MAX_PASSWORD_FILE_BYTES = 64 * 1024


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
    key_limiter: KeyLimiter
    body_budget: ByteBudget  # what the request bodies being read may hold together
    key_set: KeySetDocument | None = None
    keys: KeyRing = field(default_factory=KeyRing)
    watchers: list[FileWatcher] = field(default_factory=list)
    tasks: list[asyncio.Task[None]] = field(default_factory=list)

    def load_pool_file(self, raw: bytes) -> None:
        credentials = credentials_from_file(raw, self.settings.default_max_concurrency)
        self.install_pool([*self.static_credentials, *credentials])
        log.info("credentials file loaded", extra={"credentials": [c.id for c in credentials]})

    def load_api_keys_file(self, raw: bytes) -> None:
        """A key removed from the file stops working at the next poll: revocation needs no restart."""
        keys = static_keys_with_file(self.settings.api_keys, raw)
        if not keys:
            log.warning("the API key file lists no key: every request is refused until one is added")
        self.install_api_keys(keys)
        log.info("API keys loaded", extra={"keys": len(keys)})  # how many, never which

    def install_pool(self, credentials: list[Credential]) -> None:
        self.pool.replace(credentials)
        self.metrics.track_credentials(credential.id for credential in credentials)

    def load_key_set_file(self, raw: bytes) -> None:
        """The operator's GPTOmniAPIKeys: a key that left the set is refused at the next poll."""
        self.key_set = parse_key_set(raw)
        self._install_keys()
        log.info("API key set loaded", extra={"keys": [entry.name for entry in self.key_set.keys]})

    def install_api_keys(self, keys: list[str]) -> None:
        self.api_keys = [api_key(key) for key in keys]
        self._install_keys()

    def _install_keys(self) -> None:
        self.keys = KeyRing.of(self.api_keys, self.key_set)
        self.metrics.track_api_key_names(self.keys.names())

    async def start(self) -> None:
        for watcher in self.watchers:
            watcher.check_now()
            self.tasks.append(asyncio.create_task(watcher.run(), name=f"watch {watcher.path}"))
        await self.pool.start()
        await self.key_limiter.start()
        if self.settings.eject_probe_seconds > 0:
            self.tasks.append(asyncio.create_task(self._probe_ejected_forever(), name="ejected-prober"))

    async def stop(self) -> None:
        for task in self.tasks:
            task.cancel()
        for task in self.tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self.tasks.clear()
        await self.key_limiter.stop()
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
        keys = read_static_keys(settings.api_keys, settings.api_keys_file)
    except (OSError, ValueError) as exc:
        raise ConfigurationError(f"cannot read GPTOMNI_API_KEYS_FILE: {exc}") from None
    if not keys and settings.api_key_set_file is None:
        if settings.demo:
            return [f"demo:{DEMO_API_KEY}"]
        raise ConfigurationError(
            "no API key configured: set GPTOMNI_API_KEYS (comma list), GPTOMNI_API_KEYS_FILE or GPTOMNI_API_KEY_SET_FILE, "
            "or run the local demo with --demo"
        )
    return keys


def connect_store(settings: RelaySettings) -> SharedStore | None:
    """The shared store (GPTOMNI_REDIS_URL) the pool and the API-key limits share, if any."""
    if settings.redis_url is None:
        return None
    try:
        password = redis_password(settings)
    except (OSError, ValueError) as exc:
        raise ConfigurationError(f"cannot read GPTOMNI_REDIS_PASSWORD_FILE: {exc}") from None
    try:
        return redis_connection.connect_store(
            settings.redis_url, password, settings.redis_timeout_seconds, settings.redis_key_prefix,
            settings.pool_lease_seconds, username=settings.redis_username,
            ca_file=str(settings.redis_ca_file) if settings.redis_ca_file is not None else None,
            client_name=settings.redis_client_name or None)
    except (OSError, ValueError) as exc:  # the URL's TLS options or files (never the password: not in exc)
        raise ConfigurationError(f"GPTOMNI_REDIS_URL: {exc}") from None


def redis_password(settings: RelaySettings) -> str | None:
    """The shared store's password: from the mounted file (a Secret), else the variable."""
    if settings.redis_password_file is not None:
        raw = read_bounded(settings.redis_password_file, MAX_PASSWORD_FILE_BYTES).decode("utf-8")
        return raw.strip("\r\n") or None
    return settings.redis_password.get_secret_value() if settings.redis_password is not None else None


def build_key_limiter(settings: RelaySettings, store: SharedStore | None, replica_id: str) -> KeyLimiter:
    """API-key limits for the deployment: in the shared store, else each replica keeps to its share."""
    if store is None:
        return KeyLimiter(LocalCounts(share=settings.replicas), replica_id)
    return KeyLimiter(StoreCounts(store, lease_seconds=settings.pool_lease_seconds,
                                  expected_replicas=settings.replicas,
                                  sync_seconds=min(0.5, settings.pool_lease_seconds / 4)), replica_id)


def build_pool(settings: RelaySettings, store: SharedStore | None = None, replica_id: str | None = None,
               clock: Callable[[], float] = time.monotonic) -> Pool:
    """In-process, or shared by every replica through Redis when GPTOMNI_REDIS_URL is set.
    `clock` times the pool's own cooldowns (tests pass a fake one); the store's run on Redis's clock."""
    store = store if store is not None else connect_store(settings)
    if store is None:
        # Without a shared store each replica keeps to its share of every cookie's limit, so
        # that the replicas together never exceed it (GPTOMNI_REPLICAS: the most there can be).
        return CredentialPool(settings.cooldown_base_seconds, settings.cooldown_max_seconds,
                              limit=lambda credential: max(1, credential.max_concurrency // settings.replicas),
                              clock=clock)
    return SharedCredentialPool(
        store,
        replica_id=replica_id or f"{socket.gethostname()}-{secrets.token_hex(3)}",
        expected_replicas=settings.replicas,
        lease_seconds=settings.pool_lease_seconds,
        sync_seconds=min(0.5, settings.pool_lease_seconds / 4),
        cooldown_base_seconds=settings.cooldown_base_seconds,
        cooldown_max_seconds=settings.cooldown_max_seconds,
        store_address=printable_url(settings.redis_url or ""),
        clock=clock,
    )


def build_state(settings: RelaySettings, tracer_provider: TracerProvider | None,
                clock: Callable[[], float] = time.monotonic) -> RelayState:
    keys = resolve_api_keys(settings)
    store = connect_store(settings)
    replica_id = f"{socket.gethostname()}-{secrets.token_hex(3)}"
    pool = build_pool(settings, store, replica_id, clock)
    static = credentials_from_env(settings.credentials, settings.default_max_concurrency)
    upstream = UpstreamClient(
        settings.upstream_url,
        UpstreamTimeouts(
            connect=settings.connect_timeout_seconds,
            first_byte=settings.first_byte_timeout_seconds,
            idle=settings.idle_timeout_seconds,
            answer=settings.max_answer_seconds,
        ),
        max_connections=settings.max_upstream_connections,
    )
    body_budget = ByteBudget(settings.max_buffered_body_bytes)
    metrics = RelayMetrics(pool.statuses, pool_mode=lambda: (pool.mode, pool.store_up), models=settings.models,
                           buffered_body_bytes=lambda: body_budget.reserved)
    # With no tracer provider no span is made at all (tracing.py says why).
    observer: FailoverObserver = FailoverMetrics(metrics)
    if tracer_provider is not None:
        observer = BothObservers(observer, FailoverSpans(tracer_provider.get_tracer("gptomni_relay")))
    answers = AnswerSource(
        pool,
        upstream,
        FailoverPolicy(settings.max_attempts, settings.failover_budget_seconds, settings.acquire_timeout_seconds,
                       settings.max_answer_chars),
        observer,
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
        key_limiter=build_key_limiter(settings, store, replica_id),
        body_budget=body_budget,
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
    if settings.api_key_set_file is not None:
        relay.watchers.append(FileWatcher(
            settings.api_key_set_file, "API key set", settings.credentials_poll_seconds, MAX_API_KEYS_FILE_BYTES,
            load=relay.load_key_set_file,
        ))
    return relay
