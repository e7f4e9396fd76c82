"""The documented prompt format (docs/prompt-format.md)."""

from __future__ import annotations

import pytest

from gptomni_relay.core.conversation import NonText, ToolCall, Turn, fold_conversation
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


def test_tool_calls_and_results_are_folded_back() -> None:
    """Whichever surface they came from (chat `tool_calls` / `tool` messages, Responses
    `function_call` / `function_call_output` items), as `Turn`s."""
    turns = [Turn("user", ("Weather in Paris and Rome?",)),
             Turn("assistant", ("Checking.",), tool_calls=(ToolCall("call_1", "get_weather", '{"city": "Paris"}'),
                                                         ToolCall("call_2", "get_weather", "not json"))),
             Turn("tool", ('{"celsius": 21}',), tool_call_id="call_1"),
             Turn("tool", (), tool_call_id="call_2"),
             Turn("tool", ("orphan",), tool_call_id="call_9")]
    assert fold_conversation(turns) == (
        "User: Weather in Paris and Rome?\n\n"
        'Assistant: Checking.\n<tool_call>{"id": "call_1", "name": "get_weather", "arguments": {"city": "Paris"}}'
        '</tool_call>\n<tool_call>{"id": "call_2", "name": "get_weather", "arguments": "not json"}</tool_call>\n\n'
        'Tool result (get_weather, call_1): {"celsius": 21}\n\n'
        "Tool result (get_weather, call_2): (no output)\n\n"
        "Tool result (call_9): orphan\n\n"
        "Assistant:")


def test_chat_messages_with_tool_calls_become_turns() -> None:
    assert fold(
        {"role": "user", "content": "Q"},
        {"role": "assistant", "content": None,
         "tool_calls": [{"id": "call_1", "type": "function", "function": {"name": "f", "arguments": "{}"}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "42"},
    ) == ('User: Q\n\nAssistant: <tool_call>{"id": "call_1", "name": "f", "arguments": {}}</tool_call>\n\n'
          "Tool result (f, call_1): 42\n\nAssistant:")
