"""API keys and their names.

An entry of `GPTOMNI_API_KEYS` or of the key file is `name:key`, or a bare `key` (the
form from before names, still accepted: its name is `unnamed`). The name is what metrics
and logs show of a key, so a dashboard can tell clients apart without ever holding a
key; several keys may share a name (an old and a new key while a client rotates).
A name is 1-63 letters, digits, `_`, `.` or `-`, starting with a letter or digit.
"""

from __future__ import annotations

import hmac
import re
from dataclasses import dataclass, field

UNNAMED = "unnamed"
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,62}")


@dataclass(frozen=True)
class ApiKey:
    name: str
    key: bytes = field(repr=False)
    # The entry as configured. It is accepted as well, so that a key configured before
    # names existed, which happens to read `word:rest`, keeps working unchanged.
    entry: bytes = field(repr=False)


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
