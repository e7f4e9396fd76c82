"""Fold an OpenAI conversation into the single prompt the GPT-Omni web chat accepts.

Format (docs/prompt-format.md): a lone user message is sent verbatim, as the web chat
would. Anything longer becomes a transcript of labelled turns separated by blank lines,
ending with an open `Assistant:` turn for the model to complete:

    System: You are terse.

    User: Hi

    Assistant: Hello!

    User: And now?

    Assistant:
"""

from __future__ import annotations

from gptomni_relay.errors import bad_request
from gptomni_relay.schemas import ChatMessage, TextPart

_LABELS = {
    "system": "System",
    "developer": "System",
    "user": "User",
    "assistant": "Assistant",
    "tool": "Tool result",
    "function": "Tool result",
}


def message_text(message: ChatMessage, index: int) -> str:
    if message.content is None:
        return ""
    if isinstance(message.content, str):
        return message.content
    texts: list[str] = []
    for part_index, part in enumerate(message.content):
        if not isinstance(part, TextPart):
            raise bad_request(
                f"Content parts of type '{part.type}' are not supported: GPT-Omni's web chat takes text only.",
                param=f"messages[{index}].content[{part_index}]",
                code="unsupported_content",
            )
        texts.append(part.text)
    return "\n".join(texts)


def fold_conversation(messages: list[ChatMessage]) -> str:
    texts = [message_text(message, i) for i, message in enumerate(messages)]
    if len(messages) == 1 and messages[0].role == "user":
        return texts[0]
    # System turns go first whatever their position: the web chat has no other place for them.
    ordered = [i for i, m in enumerate(messages) if _LABELS[m.role] == "System"]
    ordered += [i for i, m in enumerate(messages) if _LABELS[m.role] != "System"]
    blocks: list[str] = []
    for i in ordered:
        message, text = messages[i], texts[i].strip()
        if not text:
            continue
        label = _LABELS[message.role]
        if message.name and label != "System":
            label = f"{label} ({message.name})"
        blocks.append(f"{label}: {text}")
    blocks.append("Assistant:")
    return "\n\n".join(blocks)
