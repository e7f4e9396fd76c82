"""Following a mounted file (a Secret's key) as it changes, without a restart.

Kubernetes mounts a Secret as a directory whose files are symlinks through `..data`,
which kubelet swaps atomically. Polling the resolved path's identity (inode, size,
mtime) every couple of seconds sees that swap and costs one stat call; the file is read
only when its identity changed, and never more than `max_bytes` of it.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Callable
from pathlib import Path

log = logging.getLogger(__name__)

FileIdentity = tuple[str, int, int, int]


def identity_of(resolved: str, stat: os.stat_result) -> FileIdentity:
    return (resolved, stat.st_ino, stat.st_size, stat.st_mtime_ns)


def file_identity(path: Path) -> FileIdentity | None:
    try:
        return identity_of(os.path.realpath(path), os.stat(path))  # follows the ..data symlinks
    except OSError:  # missing, a dangling or looping link, no permission: not there to read
        return None


def read_version(path: Path, limit: int) -> tuple[FileIdentity, bytes]:
    """The file's identity and at most `limit` + 1 bytes of it, of one and the same
    version: the link is resolved once and the identity taken from the open file (a swap
    between a stat and a read would otherwise pair one version's identity with the next
    one's content)."""
    resolved = os.path.realpath(path)
    with open(resolved, "rb") as file:
        return identity_of(resolved, os.fstat(file.fileno())), file.read(limit + 1)


def read_bounded(path: Path, limit: int) -> bytes:
    raw = read_version(path, limit)[1]
    if len(raw) > limit:
        raise ValueError(f"the file is larger than {limit} bytes")
    return raw


class FileWatcher:
    """Hands each new version of the file to `load`, which applies it or raises
    ValueError (the last good version then stays). `on_result` hears "ok", "invalid" or
    "missing", once per version of the file, not once per poll."""

    def __init__(self, path: Path, what: str, poll_seconds: float, max_bytes: int,
                 load: Callable[[bytes], None], on_result: Callable[[str], None] = lambda result: None) -> None:
        self.path = path
        self._what = what
        self._poll_seconds = poll_seconds
        self._max_bytes = max_bytes
        self._load = load
        self._on_result = on_result
        self._seen: FileIdentity | None = None
        self._reported_missing = False

    def check_now(self) -> None:
        identity = file_identity(self.path)
        if identity is None:
            if not self._reported_missing:
                log.warning(f"{self._what} file not found; waiting for it", extra={"path": str(self.path)})
                self._reported_missing = True
                self._on_result("missing")
            self._seen = None
            return
        self._reported_missing = False
        if identity == self._seen:
            return
        try:
            self._seen, raw = read_version(self.path, self._max_bytes)
        except OSError:
            return  # gone between the stat and the open: the next poll says which
        try:
            if len(raw) > self._max_bytes:
                raise ValueError(f"the file is larger than {self._max_bytes} bytes")
            self._load(raw)
        except (OSError, ValueError) as exc:
            self._reject(exc)
            return
        self._on_result("ok")

    def _reject(self, exc: Exception) -> None:
        log.error(f"{self._what} file rejected; keeping the last good version",
                  extra={"path": str(self.path), "reason": str(exc)})
        self._on_result("invalid")

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self._poll_seconds)
            try:
                self.check_now()
            except Exception:  # the watcher must outlive any surprise
                log.exception(f"{self._what} watcher failed; retrying")
