"""Usage is estimated: ~4 characters a token for alphabetic text, one per CJK character."""

from __future__ import annotations

from gptomni_relay.usage import estimate_tokens, estimate_usage


def test_alphabetic_text_counts_four_characters_a_token() -> None:
    assert estimate_tokens("") == 0
    assert estimate_tokens("abcd") == 1
    assert estimate_tokens("hello world") == 3


def test_each_cjk_character_is_a_token() -> None:
    assert estimate_tokens("你好世界") == 4
    assert estimate_tokens("こんにちは") == 5
    assert estimate_tokens("안녕하세요") == 5
    assert estimate_tokens("你好 abcd") == 2 + 2  # two ideographs, then " abcd" is 5 characters


def test_usage_adds_up() -> None:
    usage = estimate_usage("Hello there", "你好")
    assert (usage.prompt_tokens, usage.completion_tokens, usage.total_tokens) == (3, 2, 5)
