"""API keys, their names, and what each may do.

Two sources, used side by side:

- **static keys** (`GPTOMNI_API_KEYS`, `GPTOMNI_API_KEYS_FILE`): an entry is `name:key`, or
  a bare `key` (the form from before names, still accepted: its name is `unnamed`). They
  reach every model, with no limits.
- **the key set** (`GPTOMNI_API_KEY_SET_FILE`): the GPTOmniAPIKeys the operator publishes
  (gptomni_common/api_key_set.py): names, salted hashes, models, limits, expiry. The relay
  never holds these keys: a presented key is hashed with the set's salt and looked up.

The name is what metrics and logs show of a key, so a dashboard can tell clients apart
without ever holding a key; several static keys may share a name (an old and a new key
while a client rotates). A name is 1-63 letters, digits, `_`, `.` or `-`, starting with a
letter or digit.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from dataclasses import dataclass, field
from pathlib import Path

from gptomni_common.api_key_set import KeyLimits, KeySetDocument
from gptomni_relay.file_watch import read_bounded

UNNAMED = "unnamed"
MAX_API_KEYS_FILE_BYTES = 1024 * 1024  # the key file and the key set's file
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,62}")


@dataclass(frozen=True)
class ApiKey:
    name: str
    key: bytes = field(repr=False)
    # The entry as configured. It is accepted as well, so that a key configured before
    # names existed, which happens to read `word:rest`, keeps working unchanged.
    entry: bytes = field(repr=False)


@dataclass(frozen=True)
class Caller:
    """Who a request's key says it is, and what that key may do."""

    name: str
    models: frozenset[str] | None = None  # None: every model
    limits: KeyLimits | None = None
    expires_at: float | None = None  # Unix time; from then on the key is refused

    def may_use(self, model: str) -> bool:
        return self.models is None or model in self.models

    def expired(self, now: float) -> bool:
        return self.expires_at is not None and now >= self.expires_at


def api_key(entry: str) -> ApiKey:
    name, colon, key = entry.partition(":")
    if colon and key and _NAME.fullmatch(name):
        return ApiKey(name, key.encode("utf-8"), entry.encode("utf-8"))
    return ApiKey(UNNAMED, entry.encode("utf-8"), entry.encode("utf-8"))


def matching_name(token: str, keys: list[ApiKey]) -> str | None:
    """The name of the key `token` is, or None. Constant time per key, no early exit."""
    presented = token.encode("utf-8")
    name = None
    for key in keys:
        if hmac.compare_digest(presented, key.key) | hmac.compare_digest(presented, key.entry):
            name = key.name
    return name


@dataclass(frozen=True)
class KeyRing:
    """Every key the relay accepts now; replaced whole when a source changes."""

    static: list[ApiKey] = field(default_factory=list)
    salt: bytes = b""
    # sha256(salt || key) -> its caller. A lookup by digest tells an attacker nothing a
    # guess does not: they cannot choose which digest a guess hashes to (and the hash
    # table compares whole digests, which a timing difference could only reveal for a
    # digest the attacker already holds).
    managed: dict[bytes, Caller] = field(default_factory=dict)

    @classmethod
    def of(cls, static: list[ApiKey], key_set: KeySetDocument | None) -> KeyRing:
        if key_set is None:
            return cls(static)
        managed = {
            bytes.fromhex(entry.hash): Caller(
                entry.name, frozenset(entry.models) if entry.models else None, entry.limits,
                entry.expires_at.timestamp() if entry.expires_at is not None else None)
            for entry in key_set.keys
        }
        return cls(static, bytes.fromhex(key_set.salt), managed)

    def identify(self, token: str) -> Caller | None:
        name = matching_name(token, self.static)
        if name is not None:
            return Caller(name)
        if not self.managed:
            return None
        digest = hashlib.sha256(self.salt + token.encode("utf-8")).digest()
        return self.managed.get(digest)

    def names(self) -> set[str]:
        return {key.name for key in self.static} | {caller.name for caller in self.managed.values()}


def parse_api_keys(text: str) -> list[str]:
    """A key file: one key per line, or comma separated."""
    return [key.strip() for key in text.replace(",", "\n").splitlines() if key.strip()]


def static_keys_with_file(env_keys: list[str], raw: bytes) -> list[str]:
    """GPTOMNI_API_KEYS plus those of a key file's content (at start-up and on reload)."""
    return [*env_keys, *parse_api_keys(raw.decode("utf-8"))]


def read_static_keys(env_keys: list[str], key_file: Path | None) -> list[str]:
    """GPTOMNI_API_KEYS plus the mounted GPTOMNI_API_KEYS_FILE, as at start-up."""
    if key_file is None:
        return list(env_keys)
    return static_keys_with_file(env_keys, read_bounded(key_file, MAX_API_KEYS_FILE_BYTES))
