"""Token counts for `usage`. GPT-Omni reports none, so these are estimates.

A tokenizer (tiktoken) would need its vocabulary fetched at run time; the usual rule of
thumb (about four characters per token for Latin text, one per CJK character) is close
enough for dashboards and is documented as an estimate.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

# CJK ideographs, kana and hangul: roughly one token each, unlike ~4 characters per
# token for alphabetic text. A regex counts them in C: a per-character Python loop was
# 2 % of the relay's CPU.
_CJK = re.compile("[\u4e00-\u9fff\u3400-\u4dbf\u3040-\u30ff\uac00-\ud7af\uf900-\ufaff]")


def _tokens(cjk: int, characters: int) -> int:
    return cjk + math.ceil((characters - cjk) / 4)


def estimate_tokens(text: str) -> int:
    return _tokens(len(_CJK.findall(text)), len(text)) if text else 0


class TokenMeter:
    """Estimates the tokens of a text seen piece by piece, keeping counts, not the text:
    a streamed answer may be far larger than the relay should hold."""

    def __init__(self) -> None:
        self._cjk = 0
        self._characters = 0

    def add(self, piece: str) -> None:
        self._cjk += len(_CJK.findall(piece))
        self._characters += len(piece)

    @property
    def tokens(self) -> int:
        return _tokens(self._cjk, self._characters)

    def add_within(self, piece: str, limit: int) -> str:
        """Adds the longest start of `piece` that keeps the count within `limit` tokens and
        returns it (all of `piece` when it fits). The character walk runs only for the one
        piece that crosses the limit."""
        cjk = len(_CJK.findall(piece))
        if _tokens(self._cjk + cjk, self._characters + len(piece)) <= limit:
            self._cjk += cjk
            self._characters += len(piece)
            return piece
        for end, character in enumerate(piece):
            is_cjk = _CJK.match(character) is not None
            if _tokens(self._cjk + is_cjk, self._characters + 1) > limit:
                return piece[:end]
            self._cjk += is_cjk
            self._characters += 1
        return piece

    @property
    def characters(self) -> int:
        return self._characters


@dataclass(frozen=True)
class TokenUsage:
    prompt_tokens: int
    completion_tokens: int

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens
