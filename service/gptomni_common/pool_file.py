"""The pool file: the contract between the operator, which writes it into a Secret, and the
relay, which reads it from the mounted Secret (docs/credentials.md).

Only the document and its parsing live here; how the relay watches the file is its own.
"""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from gptomni_common.redaction import describe_validation_error

SECRET_KEY = "credentials.json"
DEFAULT_POOL_SECRET = "gptomni-credentials"


def is_header_safe(cookie: str) -> bool:
    """A cookie becomes an HTTP header value: a control character (CR/LF above all) would
    split the request, or make the HTTP client refuse it mid-request."""
    return not any(ord(char) < 0x20 or ord(char) == 0x7F for char in cookie)


def check_cookie_value(cookie: str) -> str:
    if not is_header_safe(cookie):
        raise ValueError("a cookie contains a control character, which no header value may")
    return cookie


class PoolEntry(BaseModel):
    model_config = ConfigDict(populate_by_name=True, extra="ignore")

    id: str = Field(min_length=1, max_length=253)
    cookie: str = Field(min_length=1, repr=False)
    weight: int = Field(1, ge=1, le=1000)
    max_concurrency: int | None = Field(None, alias="maxConcurrency", ge=1, le=100_000)
    # A cookie that is no header value (is_header_safe) still parses: one bad entry must not
    # stop the rest of the pool from loading. Readers skip such entries by id.


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


def parse_pool_document(raw: bytes) -> PoolDocument:
    if not raw.strip():
        raise PoolFileError("the pool file is empty")
    try:
        return PoolDocument.model_validate_json(raw)
    except ValidationError as exc:
        raise PoolFileError(f"the pool file is invalid: {describe_validation_error(exc)}") from None

