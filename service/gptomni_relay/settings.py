"""Relay configuration, read from `GPTOMNI_*` environment variables.

Every field here is documented in README.md ("Configuration"); keep the two in step.
A leaf: it imports nothing of the relay and reads no file. A setting that names a file
(`*_FILE`) is a path here; the module that uses the file reads it
(tests/test_import_boundaries.py).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

from pydantic import AfterValidator, BeforeValidator, Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from gptomni_common.pool_file import check_cookie_value
from gptomni_common.setting_types import BaseUrl, CommaList, LogLevel, split_comma_list

DEMO_API_KEY = "sk-gptomni-demo"


def _alias_pairs(value: object) -> object:
    """`"gpt-4o=gptomni, gpt-4o-mini=gptomni"` -> `{"gpt-4o": "gptomni", ...}`."""
    items = split_comma_list(value)
    if not isinstance(items, list):
        return items
    pairs: dict[str, str] = {}
    for item in items:
        alias, equals, model = (part.strip() for part in str(item).partition("="))
        if not equals or not alias or not model:
            raise ValueError(f"'{item}' is not of the form alias=model")
        pairs[alias] = model
    return pairs


ModelAliases = Annotated[dict[str, str], NoDecode, BeforeValidator(_alias_pairs)]


def _header_safe(cookies: list[str]) -> list[str]:
    return [check_cookie_value(cookie) for cookie in cookies]


class RelaySettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="GPTOMNI_", extra="ignore")

    host: str = "0.0.0.0"
    port: int = Field(8000, ge=0, le=65535)
    # /metrics (and the probes) on a port of their own, which no Ingress routes. 0: any
    # free port (the demo's default, so it never collides with a local Prometheus).
    metrics_port: int = Field(9090, ge=0, le=65535)
    demo: bool = False
    # Shape of the built-in simulator's answers in --demo mode (try latency, load).
    demo_token_delay_seconds: float = Field(0.03, ge=0)
    demo_first_byte_delay_seconds: float = Field(0.0, ge=0)
    demo_answer_words: int | None = Field(None, ge=1)

    upstream_url: BaseUrl = "https://gptomni.ai"

    api_keys: CommaList = Field(default_factory=list)
    api_keys_file: Path | None = None
    # The key set the operator publishes from GPTOmniAPIKey resources (api-keys.json of
    # the mounted key-set Secret): salted hashes, models, limits, expiry. Followed like
    # the pool file; docs/api-keys.md.
    api_key_set_file: Path | None = None
    models: CommaList = Field(default_factory=lambda: ["gptomni"])
    # Other names clients may use for a model (`gpt-4o=gptomni`): clients and tools that
    # hard-code OpenAI's model names work unchanged. Listed in /v1/models; the answer's
    # `model` is the name the client sent, as OpenAI echoes the requested model.
    model_aliases: ModelAliases = Field(default_factory=dict)
    # Browser origins allowed to call the API (CORS); none by default. `*` allows any.
    cors_origins: CommaList = Field(default_factory=list)

    # The seed's form: a JSON list of cookie strings.
    credentials: Annotated[list[str], AfterValidator(_header_safe)] = Field(default_factory=list)
    credentials_file: Path | None = None
    credentials_poll_seconds: float = Field(2.0, gt=0)
    default_max_concurrency: int = Field(8, ge=1)

    max_body_bytes: int = Field(1_048_576, ge=1024)
    # What every request body being read holds at once, together (core/byte_budget.py):
    # beyond it a request is refused with 503 as its body arrives. At least one body's
    # limit, so that a request within it always fits a budget otherwise empty.
    max_buffered_body_bytes: int = Field(64 * 1024 * 1024, ge=1024)
    # What one client connection may make the relay hold (http_guard.py).
    max_header_bytes: int = Field(32 * 1024, ge=4096, le=1_048_576)
    max_header_count: int = Field(100, ge=16, le=1000)
    header_timeout_seconds: float = Field(10.0, gt=0)
    body_timeout_seconds: float = Field(30.0, gt=0)
    keep_alive_timeout_seconds: float = Field(75.0, gt=0)
    # No answer goes on forever: beyond these a stream ends with an error event, a
    # non-streamed answer (held whole before it is sent) fails with 502 / 504.
    max_answer_chars: int = Field(4_000_000, ge=1024)
    max_answer_seconds: float = Field(900.0, gt=0)

    connect_timeout_seconds: float = Field(10.0, gt=0)
    first_byte_timeout_seconds: float = Field(60.0, gt=0)
    idle_timeout_seconds: float = Field(60.0, gt=0)
    max_upstream_connections: int = Field(2048, ge=1)

    max_attempts: int = Field(3, ge=1, le=10)
    failover_budget_seconds: float = Field(30.0, gt=0)
    acquire_timeout_seconds: float = Field(5.0, ge=0)

    cooldown_base_seconds: float = Field(5.0, gt=0)
    cooldown_max_seconds: float = Field(300.0, gt=0)
    eject_probe_seconds: float = Field(300.0, ge=0)

    # The shared pool (docs/shared-pool.md): with a Redis URL, every replica keeps to one set
    # of per-cookie limits and verdicts; without one, the pool lives in the process.
    redis_url: str | None = Field(None, pattern=r"^(redis|rediss|unix)://")
    redis_password: SecretStr | None = None
    redis_password_file: Path | None = None
    # Managed Redis (docs/shared-pool.md): an ACL user (AUTH user password), the CA that signed
    # a rediss:// server's certificate (a mounted file), and the name given with CLIENT
    # SETNAME ("" sends none; a user without client|setname rights is served all the same).
    redis_username: str | None = Field(None, min_length=1, max_length=256, pattern=r"^\S+$")
    redis_ca_file: Path | None = None
    redis_client_name: str = Field("gptomni-relay", pattern=r"^[!-~]{0,64}$")
    redis_timeout_seconds: float = Field(0.5, gt=0, le=30)
    redis_key_prefix: str = Field("gptomni", pattern=r"^[A-Za-z0-9_.:-]{1,64}$")
    # A slot's lease: renewed every sync tick (min(0.5 s, a quarter of this)) while the
    # request runs, it frees a dead replica's slots within this long.
    pool_lease_seconds: float = Field(10.0, ge=1, le=600)
    # The most relay pods that hold streams at once (the chart sets twice the replicas: a
    # rollout's old pods still drain while its new ones serve). Without Redis each replica
    # keeps to maxConcurrency // replicas of every cookie (at least 1); with Redis that is
    # the fallback share when the store is out of reach, divided by the larger of this and
    # the replicas last seen in the store.
    replicas: int = Field(1, ge=1, le=1000)

    shutdown_grace_seconds: float = Field(30.0, ge=0)
    sse_ping_seconds: float = Field(15.0, ge=0)
    # A streaming client that takes nothing for this long is treated as gone (its slot freed).
    client_write_timeout_seconds: float = Field(60.0, gt=0)

    log_level: LogLevel = "INFO"
    log_format: str = Field("json", pattern="^(json|text)$")

    @model_validator(mode="after")
    def _one_body_fits_the_budget(self) -> RelaySettings:
        if self.max_buffered_body_bytes < self.max_body_bytes:
            raise ValueError(f"GPTOMNI_MAX_BUFFERED_BODY_BYTES ({self.max_buffered_body_bytes}) is below "
                             f"GPTOMNI_MAX_BODY_BYTES ({self.max_body_bytes}): a request within the body "
                             "limit could never be read")
        return self

    @model_validator(mode="after")
    def _aliases_name_models(self) -> RelaySettings:
        for alias, model in self.model_aliases.items():
            if model not in self.models:
                raise ValueError(f"GPTOMNI_MODEL_ALIASES: '{alias}' names '{model}', which is not in GPTOMNI_MODELS")
            if alias in self.models:
                raise ValueError(f"GPTOMNI_MODEL_ALIASES: '{alias}' is already a model id")
        return self

    def model_id(self, name: str) -> str | None:
        """The configured model id a client's model name stands for (itself, or an alias's), or None."""
        return name if name in self.models else self.model_aliases.get(name)

    @property
    def model_names(self) -> list[str]:
        """Every name a client may ask for: the model ids, then the aliases."""
        return [*self.models, *self.model_aliases]
