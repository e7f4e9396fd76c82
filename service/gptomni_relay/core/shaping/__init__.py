"""Answer shaping: everything a client asks of an answer that GPT-Omni's web chat cannot do
itself, built in the relay, the same way for every OpenAI surface.

The API (each surface reads its request into an `AnswerShape`, then):

- `instructions(shape)` -> the relay's own system text for the folded prompt (tool
  descriptions, the JSON to write), or None: pass it to `fold_conversation`.
- Streamed text (`not shape.needs_whole_answer`): a `TextCutter(shape.stops,
  shape.max_tokens)` takes each piece (`feed`) and returns what may go out now; when its
  `done` turns true, stop reading GPT-Omni; at the end `finish()` gives what it held back,
  and `finish_reason` / `meter.tokens` describe what was sent.
- Whole answers (not streamed, or `shape.needs_whole_answer`): `interpret(shape, text)` ->
  `ShapedAnswer` (content or tool calls, finish_reason, completion tokens), or raises
  `UnusableAnswer` (core/errors.py) with a `retry_prompt`. Give it to
  `Failover.accepted(...)`, which asks again within the attempt budget.

Stops and the token limit apply to GPT-Omni's raw answer first (as a model's own stop
would), so an answer cut for length is passed on as cut text with finish_reason "length"
and never interpreted as a tool call or JSON.
"""

from gptomni_relay.core.shaping.answer import instructions, interpret
from gptomni_relay.core.shaping.shape import (
    AnswerShape,
    FinishReason,
    FunctionTool,
    JsonFormat,
    ShapedAnswer,
    ToolCall,
    ToolChoice,
)
from gptomni_relay.core.shaping.text_cut import TextCutter, cut_text

__all__ = [
    "AnswerShape",
    "FinishReason",
    "FunctionTool",
    "JsonFormat",
    "ShapedAnswer",
    "TextCutter",
    "ToolCall",
    "ToolChoice",
    "cut_text",
    "instructions",
    "interpret",
]
