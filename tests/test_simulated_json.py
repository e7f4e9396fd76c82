"""The demo simulator's answer to a JSON-schema prompt costs a bounded amount whatever the
client's schema and description: the prompt is the relay's own instruction for them."""

from __future__ import annotations

import json
import time
from typing import Any

import pytest

from gptomni_relay.core.shaping.json_output import json_instructions
from gptomni_relay.core.shaping.shape import JsonFormat
from gptomni_relay.simulated_json import json_answer

# Generous: the bounded answers take a few hundredths of a second; unbounded, seconds to
# hours and gigabytes (a self-$ref array of 9 items: 30 MB of answer, 5 s and more).
CPU_SECONDS = 0.5
ANSWER_CHARS = 1_000_000


def answered(schema: dict[str, Any], description: str | None = None) -> tuple[str | None, float]:
    prompt = "Weather in Paris\n\n" + json_instructions(JsonFormat(schema=schema, name="x", description=description))
    started = time.process_time()
    answer = json_answer(prompt, "Hello from the GPT-Omni simulator")
    return answer, time.process_time() - started


@pytest.mark.parametrize("schema", [
    {"type": "array", "minItems": 9, "items": {"$ref": "#"}},
    {"type": "object", "properties": {name: {"$ref": "#"} for name in "abcdefghi"}, "required": list("abcdefghi")},
    {"type": "array", "minItems": 64, "items": {"type": "array", "minItems": 64, "items": {"$ref": "#"}}},
], ids=["self-ref-array", "self-ref-required", "self-ref-array-64"])
def test_a_fanning_out_schema_gets_a_bounded_answer(schema: dict[str, Any]) -> None:
    answer, took = answered(schema)
    assert answer is not None and len(answer) < ANSWER_CHARS, len(answer or "")
    assert took < CPU_SECONDS, took
    json.loads(answer)  # still one JSON value: the relay's check refuses it as a model's miss


def test_a_description_full_of_schema_starts_costs_linear_time() -> None:
    answer, took = answered({"type": "object"}, ": {" * 200_000)
    assert took < CPU_SECONDS, took
    assert answer is None  # no schema read past the first few places it may start: plain text


def test_a_description_with_a_few_schema_starts_still_finds_the_schema() -> None:
    schema = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}
    answer, _ = answered(schema, 'like: {"city": "Paris"}, or: {')
    assert answer is not None and json.loads(answer) == {"city": "example"}


def test_a_line_separator_inside_the_schema_does_not_cut_it() -> None:
    schema = {"type": "object", "properties": {"city": {"type": "string", "description": "a\u2028b"}}, "required": ["city"]}
    answer, _ = answered(schema, "the city\u2029 name")
    assert answer is not None and json.loads(answer) == {"city": "example"}
