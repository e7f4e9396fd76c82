"""The documented prompt format (docs/prompt-format.md)."""

from __future__ import annotations

import pytest

from gptomni_relay.core.conversation import NonText, Turn, fold_conversation
from gptomni_relay.core.errors import BadConversation
from gptomni_relay.openai_api.request_reading import conversation
from gptomni_relay.openai_api.schemas import ChatCompletionRequest


def fold(*messages: dict) -> str:
    return fold_conversation(conversation(ChatCompletionRequest(model="gptomni", messages=messages)))


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


def test_text_parts_are_joined_by_lines() -> None:
    assert fold({"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]}) == "a\nb"


def test_non_text_parts_are_refused_where_they_stand() -> None:
    with pytest.raises(BadConversation) as caught:
        fold({"role": "user", "content": "Q"},
             {"role": "user", "content": [{"type": "text", "text": "see"}, {"type": "input_audio", "input_audio": {}}]})
    assert (caught.value.message_index, caught.value.part_index) == (1, 1)
    assert "input_audio" in caught.value.message


def test_a_conversation_without_text_is_refused() -> None:
    with pytest.raises(BadConversation) as caught:
        fold_conversation([Turn("system", ("  ",)), Turn("user", ())])
    assert caught.value.message_index is None
    with pytest.raises(BadConversation):
        fold_conversation([Turn("user", (NonText("image_url"),))])
