"""From an AnswerShape to the prompt's instructions, and from GPT-Omni's whole answer to
what the client gets."""

from __future__ import annotations

from gptomni_relay.core.conversation import corrective_prompt
from gptomni_relay.core.errors import UnusableAnswer
from gptomni_relay.core.failover import Failover, WholeAnswer
from gptomni_relay.core.shaping.json_output import extract_json, json_instructions
from gptomni_relay.core.shaping.shape import AnswerShape, ShapedAnswer
from gptomni_relay.core.shaping.text_cut import cut_text
from gptomni_relay.core.shaping.tool_calls import read_tool_calls, tool_instructions


def instructions(shape: AnswerShape) -> str | None:
    parts = []
    if shape.offers_tools:
        parts.append(tool_instructions(shape))
    if shape.json_format is not None:
        json_part = json_instructions(shape.json_format)
        parts.append(f"When you answer without calling a tool: {json_part}" if parts else json_part)
    return "\n\n".join(parts) or None


def interpret(shape: AnswerShape, text: str, prompt: str | None = None) -> ShapedAnswer:
    """Raises UnusableAnswer when tools or JSON were asked for and the answer holds no call
    or JSON that fits; given the `prompt` that got the answer, the error carries the prompt
    to ask again with (the answer and what was wrong with it). An answer cut for length is
    passed on as cut text: the client sees "length"."""
    kept, finish_reason, tokens = cut_text(text, shape.stops, shape.max_tokens)
    if finish_reason == "length":
        return ShapedAnswer(kept, (), finish_reason, tokens)
    try:
        if shape.offers_tools and (called := read_tool_calls(shape, kept, tokens)) is not None:
            return called
        if shape.json_format is not None:
            kept = extract_json(shape.json_format, kept)
    except UnusableAnswer as exc:
        if prompt is not None:
            exc.retry_prompt = corrective_prompt(
                prompt, kept, f"Your last answer could not be used: {exc.message}. "
                              "Answer again, keeping exactly to the instructions above.")
        raise
    return ShapedAnswer(kept, (), finish_reason, tokens)


async def shaped_answer(failover: Failover, shape: AnswerShape, prompt: str) -> tuple[WholeAnswer, ShapedAnswer]:
    """A whole answer shaped for the client, asked again (within the attempt budget) while
    it is unusable; then the last unusable answer's fallback, or its UnusableAnswer."""
    last: list[WholeAnswer] = []

    def accept(whole: WholeAnswer) -> tuple[WholeAnswer, ShapedAnswer]:
        last[:] = [whole]
        return whole, interpret(shape, whole.text, prompt)

    try:
        return await failover.accepted(accept)
    except UnusableAnswer as exc:
        if exc.fallback is None or not last:
            raise
        return last[0], exc.fallback
