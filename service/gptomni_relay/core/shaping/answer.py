"""From an AnswerShape to the prompt's instructions, and from GPT-Omni's whole answer to
what the client gets."""

from __future__ import annotations

from gptomni_relay.core.shaping.json_output import extract_json, json_instructions
from gptomni_relay.core.shaping.shape import AnswerShape, ShapedAnswer
from gptomni_relay.core.shaping.text_cut import cut_text


def instructions(shape: AnswerShape) -> str | None:
    return json_instructions(shape.json_format) if shape.json_format is not None else None


def interpret(shape: AnswerShape, text: str) -> ShapedAnswer:
    """Raises UnusableAnswer when JSON was asked for and the answer holds none that fits.
    An answer cut for length is passed on as cut text: the client sees "length"."""
    kept, finish_reason, tokens = cut_text(text, shape.stops, shape.max_tokens)
    if shape.json_format is not None and finish_reason != "length":
        kept = extract_json(shape.json_format, kept)
    return ShapedAnswer(kept, (), finish_reason, tokens)
