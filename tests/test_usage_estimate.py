"""Usage is estimated (core/usage.py): one token per CJK character, 0.7 per symbol, a
third per other non-ASCII letter, a fifth per any other character; bench/token_estimate_error.py
measures it against OpenAI's tokenizers."""

from __future__ import annotations

from gptomni_relay.core.usage import TokenMeter, estimate_tokens


def test_alphabetic_text_counts_five_characters_a_token() -> None:
    assert estimate_tokens("") == 0
    assert estimate_tokens("abcd") == 1
    assert estimate_tokens("hello world") == 3  # 11 characters: 2.2, rounded up
    assert estimate_tokens("a" * 50) == 10


def test_symbols_count_as_most_of_a_token_each() -> None:
    assert estimate_tokens("{}[]:,") == 5  # 6 x 0.7 = 4.2, rounded up
    assert estimate_tokens('{"a": 1}') == 5  # 5 symbols (3.5) and 3 others (0.6)


def test_other_scripts_count_a_third_of_a_token_a_letter() -> None:
    assert estimate_tokens("Привет") == 2  # six Cyrillic letters
    assert estimate_tokens("ü" * 30) == 10


def test_each_cjk_character_is_a_token() -> None:
    assert estimate_tokens("你好世界") == 4
    assert estimate_tokens("こんにちは") == 5
    assert estimate_tokens("안녕하세요") == 5
    assert estimate_tokens("你好 abcd") == 2 + 1  # two ideographs, then " abcd" is 5 characters


def test_a_text_metered_piece_by_piece_counts_as_the_whole_text() -> None:
    pieces = ["Hel", "lo, ", "你", "好 wor", "ld", "", "!", "Прив", "ет"]
    meter = TokenMeter()
    for piece in pieces:
        meter.add(piece)
    # two ideographs, two symbols, six Cyrillic letters, 12 other characters: 2 + 1.4 + 2 + 2.4
    assert meter.tokens == estimate_tokens("".join(pieces)) == 2 + 6


def test_a_cut_keeps_the_longest_start_within_the_limit() -> None:
    meter = TokenMeter()
    assert meter.add_within("hello world, this is long", 3) == "hello world,"  # 11 characters (2.2) and "," (0.7)
    assert meter.tokens == 3
    assert meter.add_within("more", 3) == ""
