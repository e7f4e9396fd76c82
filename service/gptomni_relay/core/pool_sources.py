"""Where the pool's credentials come from: the seed's `GPTOMNI_CREDENTIALS` list, and the
pool file (the contract in gptomni_common.pool_file), hot-reloaded when it changes.

Kubernetes mounts the Secret as a directory whose files are symlinks through `..data`,
which kubelet swaps atomically. Polling the resolved path's identity (inode, size,
mtime) every couple of seconds sees that swap and costs one stat call.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Callable
from pathlib import Path

from gptomni_common.pool_file import PoolFileError, parse_pool_document
from gptomni_relay.core.pool import Credential

log = logging.getLogger(__name__)

# A pool file is a few KB per credential; anything far larger is not one.
MAX_POOL_FILE_BYTES = 4 * 1024 * 1024


def credentials_from_file(raw: bytes, default_max_concurrency: int) -> list[Credential]:
    document = parse_pool_document(raw)
    return [
        Credential(
            id=entry.id,
            cookie=entry.cookie,
            weight=entry.weight,
            max_concurrency=entry.max_concurrency or default_max_concurrency,
        )
        for entry in document.credentials
    ]


def credentials_from_env(cookies: list[str], default_max_concurrency: int) -> list[Credential]:
    """The seed's form: `GPTOMNI_CREDENTIALS='["cookie1","cookie2"]'`, ids env/0, env/1, ..."""
    return [
        Credential(id=f"env/{index}", cookie=cookie, max_concurrency=default_max_concurrency)
        for index, cookie in enumerate(cookies)
        if cookie.strip()
    ]


FileIdentity = tuple[str, int, int, int]


def file_identity(path: Path) -> FileIdentity | None:
    try:
        stat = os.stat(path)  # follows the ..data symlinks
    except FileNotFoundError:
        return None
    return (os.path.realpath(path), stat.st_ino, stat.st_size, stat.st_mtime_ns)


def read_bounded(path: Path, limit: int) -> bytes:
    with path.open("rb") as file:
        raw = file.read(limit + 1)
    if len(raw) > limit:
        raise PoolFileError(f"the pool file is larger than {limit} bytes")
    return raw


class PoolFileWatcher:
    """Applies each new valid version of the file; keeps the last good pool otherwise."""

    def __init__(
        self,
        path: Path,
        poll_seconds: float,
        default_max_concurrency: int,
        apply: Callable[[list[Credential]], None],
        on_result: Callable[[str], None] = lambda result: None,
    ) -> None:
        self.path = path
        self._poll_seconds = poll_seconds
        self._default_max_concurrency = default_max_concurrency
        self._apply = apply
        self._on_result = on_result
        self._seen: FileIdentity | None = None
        self._reported_missing = False

    def check_now(self) -> None:
        identity = file_identity(self.path)
        if identity is None:
            if not self._reported_missing:
                log.warning("credentials file not found; waiting for it", extra={"path": str(self.path)})
                self._reported_missing = True
                self._on_result("missing")
            self._seen = None
            return
        self._reported_missing = False
        if identity == self._seen:
            return
        self._seen = identity
        try:
            credentials = credentials_from_file(read_bounded(self.path, MAX_POOL_FILE_BYTES), self._default_max_concurrency)
        except (OSError, PoolFileError) as exc:
            # Logged once per file version: the identity is remembered above.
            log.error("credentials file rejected; keeping the last good pool", extra={"path": str(self.path), "reason": str(exc)})
            self._on_result("invalid")
            return
        self._apply(credentials)
        log.info(
            "credentials file loaded",
            extra={"path": str(self.path), "credentials": [c.id for c in credentials]},
        )
        self._on_result("ok")

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self._poll_seconds)
            try:
                self.check_now()
            except Exception:  # the watcher must outlive any surprise
                log.exception("credentials watcher failed; retrying")
