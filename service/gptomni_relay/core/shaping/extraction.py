"""Finding the JSON a web chat model wrote in its answer, in the forms it writes it:
wrapped in `<tool_call>` tags, in fenced ``` blocks (```json or bare), or bare in the
text, with prose before and after.

Bounded: an answer is at most GPTOMNI_MAX_ANSWER_CHARS long, and the bare-JSON scan tries
at most `MAX_BARE_STARTS` places where a value could begin (a failed parse from each of
many openings would otherwise cost quadratic time on hostile text).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

MAX_BARE_STARTS = 64

TOOL_CALL_TAG = re.compile(r"<tool_call>(.*?)(?:</tool_call>|\Z)", re.S)
_FENCE = re.compile(r"```[A-Za-z0-9_+-]*[^\S\n]*\n?(.*?)```", re.S)
_OPENING = re.compile(r"[{\[]")


def _no_constants(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


_DECODER = json.JSONDecoder(parse_constant=_no_constants)


@dataclass(frozen=True)
class Found:
    """A JSON value found in an answer; `text` is None when the place held no valid JSON."""

    value: Any
    text: str | None


def parse_whole(text: str) -> Found:
    """The one JSON value `text` holds (surrounding whitespace aside), or no value."""
    stripped = text.strip()
    try:
        value, end = _DECODER.raw_decode(stripped)
    except ValueError:
        return Found(None, None)
    return Found(value, stripped) if end == len(stripped) else Found(None, None)


def tagged(text: str) -> list[Found]:
    """The contents of every `<tool_call>` tag (an unclosed last tag runs to the end)."""
    return [parse_whole(match.group(1)) for match in TOOL_CALL_TAG.finditer(text)]


def json_values(text: str) -> list[Found]:
    """Every JSON value in fenced blocks; without any fenced block, every bare one."""
    fenced = [parse_whole(match.group(1)) for match in _FENCE.finditer(text)]
    valid = [found for found in fenced if found.text is not None]
    return valid or _bare(text)


def _bare(text: str) -> list[Found]:
    found: list[Found] = []
    position = 0
    for _ in range(MAX_BARE_STARTS):
        opening = _OPENING.search(text, position)
        if opening is None:
            break
        try:
            value, end = _DECODER.raw_decode(text, opening.start())
        except ValueError:
            position = opening.start() + 1
            continue
        found.append(Found(value, text[opening.start():end]))
        position = end
    return found
