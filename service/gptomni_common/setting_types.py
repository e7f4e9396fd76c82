"""Setting types both programs read their `GPTOMNI_*` environment with."""

from __future__ import annotations

from typing import Annotated

from pydantic import AfterValidator, BeforeValidator
from pydantic_settings import NoDecode


def split_comma_list(value: object) -> object:
    """`"a, b,,c"` -> `["a", "b", "c"]`; other values pass through for pydantic to check."""
    if isinstance(value, str):
        return [item.strip() for item in value.split(",") if item.strip()]
    return value


# NoDecode stops pydantic-settings expecting JSON for a list.
CommaList = Annotated[list[str], NoDecode, BeforeValidator(split_comma_list)]
BaseUrl = Annotated[str, AfterValidator(lambda url: url.rstrip("/"))]
