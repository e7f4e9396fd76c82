"""Fold a chat conversation into the single prompt the GPT-Omni web chat accepts.

Format (docs/prompt-format.md): a lone user message is sent verbatim, as the web chat
would. Anything longer becomes a transcript of labelled turns separated by blank lines,
ending with an open `Assistant:` turn for the model to complete:

    System: You are terse.

    User: Hi

    Assistant: Hello!

    User: And now?

    Assistant:

The relay's own instructions for the answer (core/shaping: the tools it may call, the
JSON it must write) come last, as a `System:` turn right before the open `Assistant:`
turn, where a chat model heeds them most; a conversation with instructions is always a
transcript.
"""

from __future__ import annotations

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


@dataclass(frozen=True)
class NonText:
    """A content part the web chat cannot take (an image, audio, a file), by its kind."""

    kind: str


@dataclass(frozen=True)
class Turn:
    role: str  # one of ROLES
    parts: Sequence[str | NonText] = ()
    name: str | None = None


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


def fold_conversation(turns: Sequence[Turn], instructions: str | None = None) -> str:
    texts = [turn_text(turn, i) for i, turn in enumerate(turns)]
    if not any(text.strip() for text in texts):
        raise BadConversation("The conversation has no text to send.")
    if len(turns) == 1 and turns[0].role == "user" and not instructions:
        return texts[0]
    # System turns go first whatever their position: the web chat has no other place for them.
    ordered = [i for i, t in enumerate(turns) if _LABELS[t.role] == "System"]
    ordered += [i for i, t in enumerate(turns) if _LABELS[t.role] != "System"]
    blocks: list[str] = []
    for i in ordered:
        turn, text = turns[i], texts[i].strip()
        if not text:
            continue
        label = _LABELS[turn.role]
        if turn.name and label != "System":
            label = f"{label} ({turn.name})"
        blocks.append(f"{label}: {text}")
    if instructions:
        blocks.append(f"System: {instructions}")
    blocks.append("Assistant:")
    return "\n\n".join(blocks)
