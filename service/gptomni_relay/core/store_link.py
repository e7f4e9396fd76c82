"""What the shared store's calls (shared_store.py, key_limits_store.py) need from a connection.

Core builds each command as RESP bytes and hands it to a `StoreLink`; how the bytes reach
Redis (one pipelined connection, TLS, the greeting, a Cluster's redirects) is the
infrastructure's (gptomni_relay/infra/redis_connection.py), wired in by state.py.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any, Protocol


class StoreUnavailable(Exception):
    """The shared store did not answer (a connection failure, a timeout, an error reply)."""


class StoreLink(Protocol):
    """Commands in, replies out, in order; a failure is a StoreUnavailable, never a hang."""

    # Told whenever the connection in use is lost, even with no command waiting (an idle
    # connection to a store that restarted): what was kept there may be gone.
    on_lost: Callable[[StoreUnavailable], None] | None
    batches_sent: int  # writes to the store: how well commands share them (tests, benchmarks)

    def send(self, command: bytes, convert: Callable[[Any], Any] | None = None,
             on_missing_script: Callable[[], bytes] | None = None) -> asyncio.Future[Any]:
        """Queues `command`; the future gets its reply, passed through `convert`, or a
        StoreUnavailable. `on_missing_script`: for an EVALSHA, the command to send instead
        if Redis does not know the script."""
        ...

    def reconnect(self) -> None:
        """Drops the connection; the next command connects afresh."""
        ...

    async def aclose(self) -> None: ...


def encode_bulk(*values: bytes | str | int) -> bytes:
    """Values as RESP bulk strings, the form every part of a command takes on the wire."""
    out = []
    for value in values:
        data = value if isinstance(value, bytes) else str(value).encode("utf-8")
        out.append(b"$%d\r\n%s\r\n" % (len(data), data))
    return b"".join(out)


def encode_command(part_count: int, *encoded_parts: bytes) -> bytes:
    """A command from parts already encoded by `encode_bulk`, `part_count` of them in all."""
    return b"*%d\r\n%s" % (part_count, b"".join(encoded_parts))


def encode_parts(*parts: bytes | str | int) -> bytes:
    return encode_command(len(parts), encode_bulk(*parts))
