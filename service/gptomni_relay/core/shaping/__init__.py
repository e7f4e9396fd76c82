"""Answer shaping: everything a client asks of an answer that GPT-Omni's web chat cannot do
itself, built in the relay, the same way for every OpenAI surface.

The API (each surface reads its request into an `AnswerShape`, its conversation into
core/conversation.py's `Turn`s, then):

- When reading the request: `schema_problem(schema)` says why a client's JSON schema (a
  tool's parameters, a JSON output format) cannot be used (invalid, larger than
  `MAX_SCHEMA_BYTES`, deeper than `MAX_SCHEMA_DEPTH`): a 400 naming the param; the
  process's remembered verdicts are `state.SCHEMA_CHECKS.problem` (use that).
  `tools_problem(shape.tools, shape.tool_choice, SCHEMA_CHECKS.problem)` -> the first
  `ToolsProblem` of a request's tools (at most `MAX_TOOLS`, names once, valid schemas,
  a tool_choice naming an offered tool), or None.
- `instructions(shape)` -> the relay's own system text for the folded prompt (tool
  descriptions and the exact call format, the JSON to write), or None: pass it to
  `fold_conversation`.
- Streamed text (`not shape.needs_whole_answer`): a `TextCutter(shape.stops,
  shape.max_tokens)` takes each piece (`feed`) and returns what may go out now; when its
  `done` turns true, stop reading GPT-Omni; at the end `finish()` gives what it held back,
  and `finish_reason` / `meter.tokens` describe what was sent.
- Whole answers (not streamed, or `shape.needs_whole_answer`): `await
  shaped_answer(failover, shape, prompt)` -> `(WholeAnswer, ShapedAnswer)`: content or
  tool calls, finish_reason, completion tokens. An unusable answer (no valid tool call
  where one was required, JSON off its schema) is asked again within the attempt budget
  with a corrective prompt; when the attempts run out it raises `UnusableAnswer`
  (core/errors.py: a 502 with its `code`), or gives the fallback the shape allows (the
  text for `tool_choice: auto`, the first call when only one was allowed).
  `interpret(shape, text)` is the same reading of one answer, without the asking again.

Stops and the token limit apply to GPT-Omni's raw answer first (as a model's own stop
would), so an answer cut for length is passed on as cut text with finish_reason "length"
and never interpreted as a tool call or JSON.
"""

from gptomni_relay.core.shaping.answer import instructions, interpret, shaped_answer
from gptomni_relay.core.shaping.schemas import MAX_SCHEMA_BYTES, MAX_SCHEMA_DEPTH, schema_problem
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
from gptomni_relay.core.shaping.tool_calls import INVALID_TOOL_CALL, MAX_TOOLS, ToolsProblem, tools_problem

__all__ = [
    "INVALID_TOOL_CALL",
    "MAX_SCHEMA_BYTES",
    "MAX_SCHEMA_DEPTH",
    "MAX_TOOLS",
    "AnswerShape",
    "FinishReason",
    "FunctionTool",
    "JsonFormat",
    "ShapedAnswer",
    "TextCutter",
    "ToolCall",
    "ToolChoice",
    "ToolsProblem",
    "cut_text",
    "instructions",
    "interpret",
    "schema_problem",
    "shaped_answer",
    "tools_problem",
]
