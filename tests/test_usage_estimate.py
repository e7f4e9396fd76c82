"""Usage is estimated: ~4 characters a token for alphabetic text, one per CJK character."""

from __future__ import annotations

from gptomni_relay.core.usage import TokenMeter, estimate_tokens


def test_alphabetic_text_counts_four_characters_a_token() -> None:
    assert estimate_tokens("") == 0
    assert estimate_tokens("abcd") == 1
    assert estimate_tokens("hello world") == 3


def test_each_cjk_character_is_a_token() -> None:
    assert estimate_tokens("你好世界") == 4
    assert estimate_tokens("こんにちは") == 5
    assert estimate_tokens("안녕하세요") == 5
    assert estimate_tokens("你好 abcd") == 2 + 2  # two ideographs, then " abcd" is 5 characters


def test_a_text_metered_piece_by_piece_counts_as_the_whole_text() -> None:
    pieces = ["Hel", "lo, ", "你", "好 wor", "ld", "", "!"]
    meter = TokenMeter()
    for piece in pieces:
        meter.add(piece)
    assert meter.tokens == estimate_tokens("".join(pieces)) == 2 + 4  # two ideographs, 14 other characters
