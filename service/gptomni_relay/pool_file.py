"""The pool file contract (docs/credentials.md) and the watcher that hot-reloads it.

Kubernetes mounts the Secret as a directory whose files are symlinks through `..data`,
which kubelet swaps atomically. Polling the resolved path's identity (inode, size,
mtime) every couple of seconds sees that swap and costs one stat call.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from gptomni_relay.pool import Credential

log = logging.getLogger(__name__)

SECRET_KEY = "credentials.json"


class PoolEntry(BaseModel):
    model_config = ConfigDict(populate_by_name=True, extra="ignore")

    id: str = Field(min_length=1, max_length=253)
    cookie: str = Field(min_length=1, repr=False)
    weight: int = Field(1, ge=1, le=1000)
    max_concurrency: int | None = Field(None, alias="maxConcurrency", ge=1, le=100_000)


class PoolDocument(BaseModel):
    model_config = ConfigDict(populate_by_name=True, extra="ignore")

    version: Literal[1]
    generated_at: datetime | None = Field(None, alias="generatedAt")
    credentials: list[PoolEntry]

    @model_validator(mode="after")
    def _unique_ids(self) -> PoolDocument:
        ids = [entry.id for entry in self.credentials]
        if len(ids) != len(set(ids)):
            raise ValueError("credential ids must be unique")
        return self


class PoolFileError(ValueError):
    """The file is unreadable or breaks the contract. The message never quotes cookies."""


def parse_pool_document(raw: bytes, default_max_concurrency: int) -> list[Credential]:
    if not raw.strip():
        raise PoolFileError("the pool file is empty")
    try:
        document = PoolDocument.model_validate_json(raw)
    except ValidationError as exc:
        # include_input=False keeps cookie values out of the message.
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or '<root>'}: {err['msg']}"
            for err in exc.errors(include_input=False, include_url=False)
        )
        raise PoolFileError(f"the pool file is invalid: {problems}") from None
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
            credentials = parse_pool_document(self.path.read_bytes(), self._default_max_concurrency)
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
