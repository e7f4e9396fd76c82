"""Setting types both programs read their `GPTOMNI_*` environment with."""

from __future__ import annotations

from typing import Annotated

from pydantic import AfterValidator, BeforeValidator, Field
from pydantic_settings import NoDecode


def split_comma_list(value: object) -> object:
    """`"a, b,,c"` -> `["a", "b", "c"]`; other values pass through for pydantic to check."""
    if isinstance(value, str):
        return [item.strip() for item in value.split(",") if item.strip()]
    return value


# NoDecode stops pydantic-settings expecting JSON for a list.
CommaList = Annotated[list[str], NoDecode, BeforeValidator(split_comma_list)]
def _http_base_url(url: str) -> str:
    if not url.startswith(("http://", "https://")) or len(url) <= len("https://"):
        raise ValueError("must be an http:// or https:// URL")
    return url.rstrip("/")


BaseUrl = Annotated[str, AfterValidator(_http_base_url)]
LogLevel = Annotated[str, AfterValidator(lambda level: level.upper()), Field(pattern="(?i)^(DEBUG|INFO|WARNING|ERROR|CRITICAL)$")]
