"""The documented prompt format (docs/prompt-format.md)."""

from __future__ import annotations

import pytest
from gptomni_relay.errors import APIError
from gptomni_relay.prompt import fold_conversation
from gptomni_relay.schemas import ChatMessage


def fold(*messages: dict) -> str:
    return fold_conversation([ChatMessage.model_validate(m) for m in messages])


def test_a_lone_user_message_is_sent_verbatim() -> None:
    assert fold({"role": "user", "content": "  Hi\nthere "}) == "  Hi\nthere "


def test_system_turns_lead_and_the_assistant_turn_is_left_open() -> None:
    assert fold(
        {"role": "user", "content": "Q1"},
        {"role": "assistant", "content": "A1"},
        {"role": "developer", "content": "Be brief."},
        {"role": "user", "content": "Q2", "name": "ann"},
    ) == "System: Be brief.\n\nUser: Q1\n\nAssistant: A1\n\nUser (ann): Q2\n\nAssistant:"


def test_empty_turns_and_tool_results() -> None:
    assert fold(
        {"role": "user", "content": "Q"},
        {"role": "assistant", "content": None},
        {"role": "tool", "content": "42"},
    ) == "User: Q\n\nTool result: 42\n\nAssistant:"


def test_non_text_parts_are_refused_by_name() -> None:
    with pytest.raises(APIError) as caught:
        fold({"role": "user", "content": [{"type": "input_audio", "input_audio": {}}]})
    assert caught.value.status == 400 and caught.value.param == "messages[0].content[0]"
