"""Token counts for `usage` and the `max_tokens` cut. GPT-Omni reports none, so these are
estimates.

A tokenizer (tiktoken) would need its vocabulary fetched at run time, so the relay counts
four kinds of character: CJK ideographs, kana and hangul (one token each), punctuation
and symbols (0.7 each: JSON's and code's braces, quotes and colons are mostly tokens of
their own), other non-ASCII letters (three to a token: Cyrillic, Greek, accents) and
everything else (five to a token). Fitted and checked against OpenAI's
tokenizers by bench/token_estimate_error.py (docs/prompt-format.md has its table): the
plain "four characters a token" under-counted JSON by a third.
"""

from __future__ import annotations

import dataclasses
import math
import re
from dataclasses import dataclass

# Regexes count each kind in C: a per-character Python loop was 2 % of the relay's CPU.
_CJK = re.compile("[\u4e00-\u9fff\u3400-\u4dbf\u3040-\u30ff\uac00-\ud7af\uf900-\ufaff]")
_SYMBOL = re.compile(r"[^\w\s]")  # \w holds CJK and every script's letters and digits
_WIDE = re.compile(r"[^\W\x00-\x7f]")  # non-ASCII letters and digits, CJK included


@dataclass
class _Counts:
    cjk: int = 0
    symbols: int = 0
    wide: int = 0  # with the CJK among them
    characters: int = 0

    def add(self, text: str) -> None:
        self.cjk += len(_CJK.findall(text))
        self.symbols += len(_SYMBOL.findall(text))
        self.wide += len(_WIDE.findall(text))
        self.characters += len(text)

    @property
    def tokens(self) -> int:
        letters = self.wide - self.cjk
        other = self.characters - self.wide - self.symbols
        # 0.7 a symbol, 1/3 a non-ASCII letter, 0.2 any other character, in thirtieths.
        return self.cjk + math.ceil((21 * self.symbols + 10 * letters + 6 * other) / 30)


def estimate_tokens(text: str) -> int:
    counts = _Counts()
    counts.add(text)
    return counts.tokens


class TokenMeter:
    """Estimates the tokens of a text seen piece by piece, keeping counts, not the text:
    a streamed answer may be far larger than the relay should hold."""

    def __init__(self) -> None:
        self._counts = _Counts()

    def add(self, piece: str) -> None:
        self._counts.add(piece)

    @property
    def tokens(self) -> int:
        return self._counts.tokens

    def add_within(self, piece: str, limit: int) -> str:
        """Adds the longest start of `piece` that keeps the count within `limit` tokens and
        returns it (all of `piece` when it fits). The character walk runs only for the one
        piece that crosses the limit."""
        whole = dataclasses.replace(self._counts)
        whole.add(piece)
        if whole.tokens <= limit:
            self._counts = whole
            return piece
        for end, character in enumerate(piece):
            longer = dataclasses.replace(self._counts)
            longer.add(character)
            if longer.tokens > limit:
                return piece[:end]
            self._counts = longer
        return piece

    @property
    def characters(self) -> int:
        return self._counts.characters


@dataclass(frozen=True)
class TokenUsage:
    prompt_tokens: int
    completion_tokens: int

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens
