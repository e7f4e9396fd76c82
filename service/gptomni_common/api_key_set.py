"""The key-set file: the contract between the operator, which publishes every
GPTOmniAPIKey of a namespace into one Secret, and the relay, which mounts it and
follows it (docs/api-keys.md).

The file holds no key: each entry carries `sha256(salt || key)` under the document's
random salt, so the relay compares a presented key by hashing it once, and a leaked
file gives no key away. The keys the operator generates are 256 random bits, so a
fast hash is the right one here (a slow KDF only helps guessable passwords, and would
cost every request); keys a user brings must be at least MIN_KEY_LENGTH characters.
"""

from __future__ import annotations

import hashlib
from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from gptomni_common.redaction import describe_validation_error

SECRET_KEY = "api-keys.json"
DEFAULT_KEY_SET_SECRET = "gptomni-api-key-set"
MIN_KEY_LENGTH = 24
# A key name, as api_keys.py's names: it labels metrics and logs.
NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$"


def key_hash(salt_hex: str, key: str) -> str:
    return hashlib.sha256(bytes.fromhex(salt_hex) + key.encode("utf-8")).hexdigest()


def key_fingerprint(key: str) -> str:
    """What status and logs may show of a key: `sha256:` and the first 16 hex digits of its
    SHA-256 (`printf %s "$KEY" | sha256sum | cut -c1-16` gives the same)."""
    return "sha256:" + hashlib.sha256(key.encode("utf-8")).hexdigest()[:16]


class KeyLimits(BaseModel):
    model_config = ConfigDict(populate_by_name=True, extra="ignore", frozen=True)

    requests_per_minute: int | None = Field(None, alias="requestsPerMinute", ge=1, le=1_000_000)
    max_concurrent_streams: int | None = Field(None, alias="maxConcurrentStreams", ge=1, le=100_000)
    tokens_per_day: int | None = Field(None, alias="tokensPerDay", ge=1, le=10**12)


class KeySetEntry(BaseModel):
    model_config = ConfigDict(populate_by_name=True, extra="ignore", frozen=True)

    name: str = Field(pattern=NAME_PATTERN)
    hash: str = Field(pattern=r"^[0-9a-f]{64}$", repr=False)
    fingerprint: str = ""
    models: tuple[str, ...] = ()  # empty: every model
    limits: KeyLimits = Field(default_factory=KeyLimits)
    expires_at: datetime | None = Field(None, alias="expiresAt")


class KeySetDocument(BaseModel):
    model_config = ConfigDict(populate_by_name=True, extra="ignore")

    version: Literal[1]
    generated_at: datetime | None = Field(None, alias="generatedAt")
    salt: str = Field(pattern=r"^[0-9a-f]{32,128}$", repr=False)
    keys: list[KeySetEntry]

    @model_validator(mode="after")
    def _unique_names(self) -> KeySetDocument:
        names = [entry.name for entry in self.keys]
        if len(names) != len(set(names)):
            raise ValueError("key names must be unique")
        return self


class KeySetFileError(ValueError):
    """The file is unreadable or breaks the contract."""


def parse_key_set(raw: bytes) -> KeySetDocument:
    if not raw.strip():
        raise KeySetFileError("the key-set file is empty")
    try:
        return KeySetDocument.model_validate_json(raw)
    except ValidationError as exc:
        raise KeySetFileError(f"the key-set file is invalid: {describe_validation_error(exc)}") from None
