"""From an AnswerShape to the prompt's instructions, and from GPT-Omni's whole answer to
what the client gets."""

from __future__ import annotations

from gptomni_relay.core.shaping.shape import AnswerShape, ShapedAnswer
from gptomni_relay.core.shaping.text_cut import cut_text


def instructions(shape: AnswerShape) -> str | None:
    return None


def interpret(shape: AnswerShape, text: str) -> ShapedAnswer:
    kept, finish_reason, tokens = cut_text(text, shape.stops, shape.max_tokens)
    return ShapedAnswer(kept, (), finish_reason, tokens)
