"""Token counts for `usage`. GPT-Omni reports none, so these are estimates.

A tokenizer (tiktoken) would need its vocabulary fetched at run time; the usual rule of
thumb (about four characters per token for Latin text, one per CJK character) is close
enough for dashboards and is documented as an estimate.
"""

from __future__ import annotations

import math

from gptomni_relay.schemas import Usage


def _is_cjk(char: str) -> bool:
    code = ord(char)
    return (
        0x4E00 <= code <= 0x9FFF
        or 0x3400 <= code <= 0x4DBF
        or 0x3040 <= code <= 0x30FF
        or 0xAC00 <= code <= 0xD7AF
        or 0xF900 <= code <= 0xFAFF
    )


def estimate_tokens(text: str) -> int:
    if not text:
        return 0
    cjk = sum(1 for char in text if _is_cjk(char))
    return cjk + math.ceil((len(text) - cjk) / 4)


def estimate_usage(prompt: str, completion: str) -> Usage:
    prompt_tokens = estimate_tokens(prompt)
    completion_tokens = estimate_tokens(completion)
    return Usage(prompt_tokens=prompt_tokens, completion_tokens=completion_tokens, total_tokens=prompt_tokens + completion_tokens)
