"""`stop` and `max_tokens` on an answer that arrives in pieces.

`TextCutter.feed(piece)` returns the text that may go to the client now; `finish()`
returns what was held back once the answer is over. Once `finish_reason` is set the answer
is cut: nothing more is taken and the caller stops reading GPT-Omni.

- A stop string is never sent, and neither is anything after it. A piece may end inside a
  stop string that the next piece completes, so the cutter holds back the longest end of
  the text that could still begin a stop string, and only that: the rest goes out at once.
- The token limit counts what is sent (core/usage.py's estimate), so `completion_tokens`
  is exactly the limit when the answer is cut for length.
"""

from __future__ import annotations

from collections.abc import Sequence

from gptomni_relay.core.shaping.shape import FinishReason
from gptomni_relay.core.usage import TokenMeter


def _held_suffix(text: str, stops: Sequence[str]) -> int:
    """Length of the longest end of `text` that is the start of a stop string."""
    longest = 0
    for stop in stops:
        # From the earliest place a stop string could still begin: the first match is the longest.
        position = text.find(stop[0], max(len(text) - len(stop) + 1, 0))
        while position != -1 and len(text) - position > longest:
            if stop.startswith(text[position:]):
                longest = len(text) - position
                break
            position = text.find(stop[0], position + 1)
    return longest


class TextCutter:
    def __init__(self, stops: Sequence[str] = (), max_tokens: int | None = None) -> None:
        self._stops = tuple(stop for stop in stops if stop)
        self._max_tokens = max_tokens
        self._held = ""
        self.meter = TokenMeter()  # what was let through
        self.finish_reason: FinishReason | None = None

    @property
    def done(self) -> bool:
        return self.finish_reason is not None

    def feed(self, piece: str) -> str:
        if self.finish_reason is not None:
            return ""
        text = self._held + piece if self._held else piece
        self._held = ""
        if self._stops:
            found = [position for stop in self._stops if (position := text.find(stop)) != -1]
            if found:
                self.finish_reason = "stop"
                return self._limit(text[:min(found)])
            held = _held_suffix(text, self._stops)
            if held:
                text, self._held = text[:-held], text[-held:]
        return self._limit(text)

    def finish(self) -> str:
        """At the end of the answer: what was held back (the answer ended in the middle of
        what might have become a stop string). Sets `finish_reason` if still unset."""
        held, self._held = self._held, ""
        text = self._limit(held) if self.finish_reason is None else ""
        if self.finish_reason is None:
            self.finish_reason = "stop"
        return text

    def _limit(self, text: str) -> str:
        if self._max_tokens is None:
            self.meter.add(text)
            return text
        kept = self.meter.add_within(text, self._max_tokens)
        if len(kept) < len(text):
            self.finish_reason = "length"
            self._held = ""
        return kept


def cut_text(text: str, stops: Sequence[str] = (), max_tokens: int | None = None) -> tuple[str, FinishReason, int]:
    """A whole answer through the same rules: the kept text, why it ended, its tokens."""
    cutter = TextCutter(stops, max_tokens)
    kept = cutter.feed(text) + cutter.finish()
    return kept, cutter.finish_reason or "stop", cutter.meter.tokens
