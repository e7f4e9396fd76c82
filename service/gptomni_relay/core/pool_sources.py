"""Where the pool's credentials come from: the seed's `GPTOMNI_CREDENTIALS` list, and the
pool file (the contract in gptomni_common.pool_file), which the relay follows with a
file_watch.FileWatcher."""

from __future__ import annotations

import logging

from gptomni_common.pool_file import is_header_safe, parse_pool_document
from gptomni_relay.core.pool import Credential

log = logging.getLogger(__name__)

# A pool file is a few KB per credential; anything far larger is not one.
MAX_POOL_FILE_BYTES = 4 * 1024 * 1024


def credentials_from_file(raw: bytes, default_max_concurrency: int) -> list[Credential]:
    """The file's credentials, less any whose cookie cannot be a header value (each logged by id)."""
    document = parse_pool_document(raw)
    unusable = [entry.id for entry in document.credentials if not is_header_safe(entry.cookie)]
    if unusable:
        log.error("credentials left out: their cookie contains a control character", extra={"credentials": unusable})
    return [
        Credential(
            id=entry.id,
            cookie=entry.cookie,
            weight=entry.weight,
            max_concurrency=entry.max_concurrency or default_max_concurrency,
        )
        for entry in document.credentials
        if entry.id not in unusable
    ]


def credentials_from_env(cookies: list[str], default_max_concurrency: int) -> list[Credential]:
    """The seed's form: `GPTOMNI_CREDENTIALS='["cookie1","cookie2"]'`, ids env/0, env/1, ..."""
    return [
        Credential(id=f"env/{index}", cookie=cookie, max_concurrency=default_max_concurrency)
        for index, cookie in enumerate(cookies)
        if cookie.strip()
    ]
