"""Finding the JSON a web chat model wrote in its answer, in the forms it writes it:
wrapped in tags (`<tool_call>`, `<tool_calls>`, `<function_call>`), in fenced ``` blocks
(```json or bare), or bare in the text, with prose before and after. Each value found
keeps where it stood, so the prose around tool calls can be kept as the answer's text.

Bounded: an answer is at most GPTOMNI_MAX_ANSWER_CHARS long, and decoding from many places
of it (the bare openings, the looks past a closing tag) is held to one budget per reading,
`_DecodeBudget`: every decode is charged what it read, and all of them together read at
most `DECODE_READINGS` times the answer (plus the one decode that crosses the line). The
upstream picks the text: 64 openings each parsed to the end of 878 KB cost 0.73 s. The
bare scan also tries at most `MAX_BARE_STARTS` openings.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from typing import Any

MAX_BARE_STARTS = 64
DECODE_READINGS = 2  # the answer's length, times this, is what one reading may decode
_DECODE_FLOOR = 4096  # what any answer may decode, however short

# An unclosed last tag runs to the end of the answer (the model stopped before closing it).
TAGGED = re.compile(r"<(tool_calls?|function_call)>(.*?)(?:</\1>|\Z)", re.S)
# Possessive: with a plain `*`, an unclosed fence ("```" and 64k letters) made the lazy
# body re-scan the rest of the answer once per shorter info string, O(n^2) on the event
# loop (19 s). The info string holds no backtick, so giving it back never finds a match.
FENCE_OPENING = r"```[A-Za-z0-9_+-]*+[^\S\n]*+\n?"  # the backticks, an info string, its line's end
_FENCE = re.compile(FENCE_OPENING + r"(.*?)```", re.S)
_OPENING = re.compile(r"[{\[]")
_SPACE = re.compile(r"\s*")


def _no_constants(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _finite(text: str) -> float:
    # Python reads 1e999 as infinity and would write it back as `Infinity`, which no
    # client's JSON parser takes: a number JSON cannot carry makes the value no JSON.
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"{text} is out of range")
    return value


_DECODER = json.JSONDecoder(parse_constant=_no_constants, parse_float=_finite)


def _writable(value: Any) -> Any:
    """`value` if it can go out as UTF-8 JSON. A `"\\ud800"` escape is valid JSON but
    decodes to a lone surrogate, which no UTF-8 text can carry: passed on, it broke the
    response (and the corrective prompt quoting it). ValueError then."""
    json.dumps(value, ensure_ascii=False).encode()  # UnicodeEncodeError is a ValueError
    return value


def _decode(text: str, start: int = 0) -> tuple[Any, int]:
    value, end = _DECODER.raw_decode(text, start)
    return _writable(value), end


class _DecodeBudget:
    """Decoding from places of one text, each decode charged the characters it read: to
    the value's end, or to where it failed. A decode that fails without saying where (a
    number out of range, `NaN`, nesting too deep) is charged the rest of the text. And at
    most `MAX_BARE_STARTS` decodes may fail: the stdlib's JSONDecodeError counts the lines
    from the start of the text up to where it failed, so each failure costs a pass over the
    text whatever it read (25,000 tags, each broken and looked past, were 8.5 s for 805 KB)."""

    def __init__(self, text: str) -> None:
        self._text = text
        self._left = DECODE_READINGS * len(text) + _DECODE_FLOOR
        self._failures_left = MAX_BARE_STARTS

    @property
    def spent(self) -> bool:
        return self._left <= 0 or self._failures_left <= 0

    def decode(self, start: int) -> tuple[Any, int] | None:
        """The value at `start` and where it ends, or None when no JSON value starts there."""
        try:
            value, end = _decode(self._text, start)
        except json.JSONDecodeError as exc:
            self._failed(exc.pos - start + 1)
            return None
        except (ValueError, RecursionError):  # RecursionError: nested deeper than the decoder goes
            self._failed(len(self._text) - start)
            return None
        self._left -= end - start
        return value, end

    def _failed(self, read: int) -> None:
        self._left -= read
        self._failures_left -= 1


def parse_json(text: str) -> Any:
    """`text` as one JSON value that can be written back as JSON; ValueError otherwise."""
    return _writable(_DECODER.decode(text))


@dataclass(frozen=True)
class Found:
    """A JSON value found in an answer at `start:end`; `text` is None when the place held
    no valid JSON."""

    value: Any
    text: str | None
    start: int = 0
    end: int = 0


def parse_whole(text: str, start: int = 0, end: int = 0) -> Found:
    """The one JSON value `text` holds (surrounding whitespace aside), or no value."""
    stripped = text.strip()
    try:
        value, stop = _decode(stripped)
    except (ValueError, RecursionError):  # nested deeper than the decoder goes: not an answer's JSON
        return Found(None, None, start, end)
    return Found(value, stripped, start, end) if stop == len(stripped) else Found(None, None, start, end)


def tagged(text: str) -> list[Found]:
    """The contents of every tag, each a JSON value or, inside the tag, a fenced one."""
    found = []
    position = 0
    # Each look past a closing tag decodes from the tag on, to the end of the text at worst.
    budget = _DecodeBudget(text)
    while (match := TAGGED.search(text, position)) is not None:
        value = parse_whole(match.group(2), match.start(), match.end())
        if value.text is None and not budget.spent:
            value = _json_through_closing(text, match, budget) or value
        if value.text is None:
            fenced = [f for f in _fenced(match.group(2)) if f.text is not None]
            if len(fenced) == 1:
                value = Found(fenced[0].value, fenced[0].text, match.start(), match.end())
        found.append(value)
        position = max(value.end, match.end())
    return found


def _json_through_closing(text: str, match: re.Match[str], budget: _DecodeBudget) -> Found | None:
    """The JSON value right after an opening tag, when it runs past the first closing tag
    to another: an argument may hold `</tool_call>` (a coding agent's file), so the value,
    not the first closing tag in the text, says where the tag ends."""
    closing = f"</{match.group(1)}>"
    if not match.group(0).endswith(closing):
        return None  # unclosed: it already runs to the end
    body = match.group(2)
    begin = match.start(2) + len(body) - len(body.lstrip())
    if (decoded := budget.decode(begin)) is None:
        return None
    value, stop = decoded
    after = _SPACE.match(text, stop).end()  # type: ignore[union-attr]  # (no copy of the rest per tag)
    if not text.startswith(closing, after):
        return None
    return Found(value, text[begin:stop], match.start(), after + len(closing))


def _fenced(text: str) -> list[Found]:
    return [parse_whole(match.group(1), match.start(), match.end()) for match in _FENCE.finditer(text)]


def json_values(text: str) -> list[Found]:
    """Every JSON value in fenced blocks; without any fenced block, every bare one."""
    valid = [found for found in _fenced(text) if found.text is not None]
    return valid or bare_values(text)


def bare_values(text: str) -> list[Found]:
    found: list[Found] = []
    position = 0
    budget = _DecodeBudget(text)
    for _ in range(MAX_BARE_STARTS):
        opening = _OPENING.search(text, position)
        if opening is None or budget.spent:
            break
        if (decoded := budget.decode(opening.start())) is None:
            position = opening.start() + 1
            continue
        value, end = decoded
        found.append(Found(value, text[opening.start():end], opening.start(), end))
        position = end
    return found
