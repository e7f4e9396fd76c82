"""Fold a chat conversation into the single prompt the GPT-Omni web chat accepts.

Format (docs/prompt-format.md): a lone user message is sent verbatim, as the web chat
would. Anything longer becomes a transcript of labelled turns separated by blank lines,
ending with an open `Assistant:` turn for the model to complete:

    System: You are terse.

    User: Hi

    Assistant: Hello!

    User: And now?

    Assistant:

Tool calls of earlier assistant turns are written the way the relay tells the model to
write them (`render_tool_call`), so the transcript shows it the format it must use; a
tool's result is a `Tool result (name, id):` turn.

The relay's own instructions for the answer (core/shaping: the tools it may call, the
JSON it must write) come last, as a `System:` turn right before the open `Assistant:`
turn, where a chat model heeds them most; a conversation with instructions is always a
transcript.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass

from gptomni_relay.core.errors import BadConversation

_LABELS = {
    "system": "System",
    "developer": "System",
    "user": "User",
    "assistant": "Assistant",
    "tool": "Tool result",
    "function": "Tool result",
}
ROLES = frozenset(_LABELS)
TOOL_CALL_TAG = "tool_call"
# How much of an unusable answer is quoted back in the corrective prompt: enough for the
# model to see its mistake, never the whole of a runaway answer.
QUOTED_ANSWER_CHARS = 2000


@dataclass(frozen=True)
class NonText:
    """A content part the web chat cannot take (an image, audio, a file), by its kind."""

    kind: str


@dataclass(frozen=True)
class ToolCall:
    """A function call, in an answer or in the history (chat `tool_calls`, Responses
    `function_call` items)."""

    id: str  # "call_..."
    name: str
    arguments: str  # a JSON object, as OpenAI sends it: a string


@dataclass(frozen=True)
class Turn:
    """One turn of the conversation, whichever OpenAI surface it came from.

    - an assistant turn may carry `tool_calls` (with or without text parts);
    - a tool result is `role="tool"` with the result as its parts and `tool_call_id`
      naming the call it answers (its function's name is found from that call).
    """

    role: str  # one of ROLES
    parts: Sequence[str | NonText] = ()
    name: str | None = None
    tool_calls: Sequence[ToolCall] = ()
    tool_call_id: str | None = None


def render_tool_call(name: str, arguments: str, call_id: str | None = None) -> str:
    """A call as the model is told to write it (core/shaping/tool_calls.py parses it back)."""
    try:
        parsed: object = json.loads(arguments)
        rendered = _call_json(name, parsed, call_id)
    except (ValueError, RecursionError):
        # Kept as the client sent it: the model should see what was called. Also when the
        # arguments decode to a lone surrogate (a `\\ud800` escape), which no prompt can carry.
        rendered = _call_json(name, arguments, call_id)
    return f"<{TOOL_CALL_TAG}>{rendered}</{TOOL_CALL_TAG}>"


def _call_json(name: str, arguments: object, call_id: str | None) -> str:
    call = {"id": call_id, "name": name, "arguments": arguments} if call_id else {"name": name, "arguments": arguments}
    text = json.dumps(call, ensure_ascii=False)
    text.encode()  # UnicodeEncodeError (a ValueError) for a lone surrogate
    return text


def turn_text(turn: Turn, index: int) -> str:
    texts: list[str] = []
    for part_index, part in enumerate(turn.parts):
        if isinstance(part, NonText):
            raise BadConversation(
                f"Content parts of type '{part.kind}' are not supported: GPT-Omni's web chat takes text only.",
                message_index=index, part_index=part_index,
            )
        texts.append(part)
    return "\n".join(texts)


def _body(turn: Turn, text: str) -> str:
    calls = [render_tool_call(call.name, call.arguments, call.id) for call in turn.tool_calls]
    return "\n".join([text, *calls] if text else calls)


def _label(turn: Turn, call_names: dict[str, str]) -> str:
    label = _LABELS[turn.role]
    if label == "System":
        return label
    about = [name] if (name := turn.name or call_names.get(turn.tool_call_id or "")) else []
    if turn.tool_call_id:
        about.append(turn.tool_call_id)
    return f"{label} ({', '.join(about)})" if about else label


def fold_conversation(turns: Sequence[Turn], instructions: str | None = None) -> str:
    texts = [_body(turn, turn_text(turn, i).strip()) for i, turn in enumerate(turns)]
    if not any(texts):
        raise BadConversation("The conversation has no text to send.")
    if len(turns) == 1 and turns[0].role == "user" and not instructions:
        return turn_text(turns[0], 0)
    call_names = {call.id: call.name for turn in turns for call in turn.tool_calls}
    # System turns go first whatever their position: the web chat has no other place for them.
    ordered = [i for i, t in enumerate(turns) if _LABELS[t.role] == "System"]
    ordered += [i for i, t in enumerate(turns) if _LABELS[t.role] != "System"]
    blocks: list[str] = []
    for i in ordered:
        turn, text = turns[i], texts[i]
        if not text and turn.tool_call_id is None:
            continue
        blocks.append(f"{_label(turn, call_names)}: {text or '(no output)'}")
    if instructions:
        blocks.append(f"System: {instructions}")
    blocks.append("Assistant:")
    return "\n\n".join(blocks)


def corrective_prompt(prompt: str, answer: str, correction: str) -> str:
    """`prompt` (a transcript ending in the open `Assistant:` turn) asked again after an
    unusable `answer`: the answer as the model's turn, then what was wrong with it."""
    quoted = answer.strip()
    if len(quoted) > QUOTED_ANSWER_CHARS:
        quoted = quoted[:QUOTED_ANSWER_CHARS] + " [...]"
    return f"{prompt} {quoted}\n\nSystem: {correction}\n\nAssistant:"
