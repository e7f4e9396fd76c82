"""`stop` and `max_tokens` / `max_completion_tokens`, honoured by the relay (GPT-Omni has
neither): the cutter itself on every split of an answer into pieces, then the OpenAI SDK
against a real relay, streamed and not."""

from __future__ import annotations

import random

import pytest

from gptomni_relay.core.shaping import TextCutter, cut_text
from gptomni_relay.core.usage import estimate_tokens
from gptomni_relay.simulator import Behaviour, SimulatorState
from tests.harness import Harness
from tests.polling import eventually

HELLO = [{"role": "user", "content": "Hello relay"}]
EXPECTED = "Hello from the GPT-Omni simulator! You said: Hello relay"


def longest_start_within(text: str, tokens: int) -> str:
    """What a cut at `tokens` keeps, by the relay's estimate (core/usage.py)."""
    return max((text[:end] for end in range(len(text) + 1) if estimate_tokens(text[:end]) <= tokens), key=len)


def streamed(pieces: list[str], stops: tuple[str, ...], max_tokens: int | None) -> tuple[str, str | None, int]:
    cutter = TextCutter(stops, max_tokens)
    out = []
    for piece in pieces:
        out.append(cutter.feed(piece))
        if cutter.done:
            break
    out.append(cutter.finish())
    return "".join(out), cutter.finish_reason, cutter.meter.tokens


def random_split(text: str, rng: random.Random) -> list[str]:
    cuts = sorted(rng.sample(range(1, len(text)), rng.randint(0, min(12, len(text) - 1))))
    return [text[a:b] for a, b in zip([0, *cuts], [*cuts, len(text)], strict=True)]


@pytest.mark.parametrize("seed", range(200))
def test_a_stream_cut_anywhere_gives_the_whole_answers_cut(seed: int) -> None:
    rng = random.Random(seed)
    alphabet = "ab \n你"
    text = "".join(rng.choice(alphabet) for _ in range(rng.randint(1, 60)))
    stops = tuple("".join(rng.choice(alphabet) for _ in range(rng.randint(1, 4))) for _ in range(rng.randint(0, 4)))
    max_tokens = rng.choice([None, 1, 3, 8, 30])
    whole = cut_text(text, stops, max_tokens)
    assert streamed(random_split(text, rng), stops, max_tokens) == whole
    kept, finish_reason, tokens = whole
    assert not any(stop in kept for stop in stops)
    assert text.startswith(kept)
    assert tokens == estimate_tokens(kept)
    if finish_reason == "length":
        assert tokens == max_tokens and len(kept) < len(text)


def test_only_a_possible_stop_start_is_held_back() -> None:
    cutter = TextCutter(["END"])
    assert cutter.feed("Hello E") == "Hello "  # "E" may begin END
    assert cutter.feed("x") == "Ex"  # it did not: released with the next piece
    assert cutter.feed("and EN") == "and "
    assert cutter.feed("D and more") == ""
    assert cutter.finish_reason == "stop"


def test_an_answer_ending_inside_a_possible_stop_keeps_that_text() -> None:
    assert cut_text("the end is EN", ("END",)) == ("the end is EN", "stop", estimate_tokens("the end is EN"))


def test_stop_across_pieces_non_streamed_and_streamed(relay: Harness) -> None:
    client = relay.client()
    # The simulator sends one word per piece: "Omni simulator" spans two of them.
    completion = client.chat.completions.create(model="gptomni", messages=HELLO, stop=["Omni simulator", "zzz"])
    assert completion.choices[0].message.content == "Hello from the GPT-"
    assert completion.choices[0].finish_reason == "stop"
    assert completion.usage is not None and completion.usage.completion_tokens == estimate_tokens("Hello from the GPT-")

    chunks = list(client.chat.completions.create(model="gptomni", messages=HELLO, stop="Omni simulator", stream=True,
                                                 stream_options={"include_usage": True}))
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "Hello from the GPT-"
    assert chunks[-2].choices[0].finish_reason == "stop"
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == estimate_tokens("Hello from the GPT-")


@pytest.mark.parametrize("param", ["max_tokens", "max_completion_tokens"])
def test_max_tokens_cuts_with_finish_reason_length(relay: Harness, param: str) -> None:
    client = relay.client()
    completion = client.chat.completions.create(model="gptomni", messages=HELLO, **{param: 5})
    assert completion.choices[0].finish_reason == "length"
    assert completion.choices[0].message.content == longest_start_within(EXPECTED, 5)
    assert completion.usage is not None and completion.usage.completion_tokens == 5

    chunks = list(client.chat.completions.create(model="gptomni", messages=HELLO, stream=True, **{param: 5},
                                                 stream_options={"include_usage": True}))
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == longest_start_within(EXPECTED, 5)
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "length"
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 5


def test_a_limit_the_answer_fits_in_finishes_with_stop(relay: Harness) -> None:
    completion = relay.client().chat.completions.create(model="gptomni", messages=HELLO, max_tokens=1000)
    assert (completion.choices[0].message.content, completion.choices[0].finish_reason) == (EXPECTED, "stop")


def test_the_smaller_of_both_limits_holds(relay: Harness) -> None:
    completion = relay.client().chat.completions.create(model="gptomni", messages=HELLO, max_tokens=9,
                                                        max_completion_tokens=2)
    assert completion.choices[0].message.content == longest_start_within(EXPECTED, 2)


def test_a_cut_stream_stops_reading_gpt_omni(make_relay) -> None:  # noqa: ANN001
    sim = SimulatorState(default=Behaviour(answer_words=400, token_delay=0.01))
    relay = make_relay(sim=sim)
    chunks = list(relay.client().chat.completions.create(model="gptomni", messages=HELLO, stream=True, max_tokens=3))
    assert chunks[-1].choices[0].finish_reason == "length"
    # The upstream answer (400 words, ~4 s) was abandoned, not read to its end.
    relay.on_loop(eventually(lambda: sim.unfinished == 1, step=0.01))
    assert sim.completed == 0
