"""Token counts for `usage`. GPT-Omni reports none, so these are estimates.

A tokenizer (tiktoken) would need its vocabulary fetched at run time; the usual rule of
thumb (about four characters per token for Latin text, one per CJK character) is close
enough for dashboards and is documented as an estimate.
"""

from __future__ import annotations

import math
import re

from gptomni_relay.schemas import Usage

# CJK ideographs, kana and hangul: roughly one token each, unlike ~4 characters per
# token for alphabetic text. A regex counts them in C: a per-character Python loop was
# 2 % of the relay's CPU.
_CJK = re.compile("[\u4e00-\u9fff\u3400-\u4dbf\u3040-\u30ff\uac00-\ud7af\uf900-\ufaff]")


def estimate_tokens(text: str) -> int:
    if not text:
        return 0
    cjk = len(_CJK.findall(text))
    return cjk + math.ceil((len(text) - cjk) / 4)


def estimate_usage(prompt: str, completion: str) -> Usage:
    prompt_tokens = estimate_tokens(prompt)
    completion_tokens = estimate_tokens(completion)
    return Usage(prompt_tokens=prompt_tokens, completion_tokens=completion_tokens, total_tokens=prompt_tokens + completion_tokens)
