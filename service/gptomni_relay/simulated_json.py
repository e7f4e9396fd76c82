"""The simulator's answer to a prompt that asks for JSON: the smallest value the prompt's
schema accepts, so structured output (`chat.completions.parse`, `text.format`) works in
demo mode as it does against GPT-Omni, which reads the same instruction.

The schema is read from the relay's own instruction (core/shaping/json_output.py), the
way a model would read it. Only what a simple model gets right is honoured: types,
`const`, `enum`, required properties, `minItems`, `minLength`, numeric minimums, local
`$ref`s and the first branch of `anyOf` / `oneOf`; a schema beyond that gets a value the
relay's check refuses, and the relay answers as it would for a real model's miss.

The schema is the client's, so what one answer may cost is bounded, not just its depth:
a self-`$ref` array of 64 items is 64^12 values at depth 12. One `_Budget` per answer
(`_BUDGET` units: one per value built, one per character of a string, number, constant,
property name, `$ref` or type list it reads; about 200 KB of answer at most) stops it:
past it no item or property is added and the rest is None, an answer the relay refuses.
Finding the schema on its line is linear too: only the first `_CANDIDATES` places where
it may start are tried (a description holding more `: {` gets no schema read).
"""

from __future__ import annotations

import json
import math
from typing import Any

from gptomni_relay.core.shaping.json_output import JSON_OBJECT_INSTRUCTION, JSON_SCHEMA_INSTRUCTION

_MAX_DEPTH = 12
_MAX_ITEMS = 64
_MAX_STRING = 4096
_BUDGET = 32_768
# Each try that fails costs the length of the line (json's error counts the newlines before
# it), and the client's description may hold any number of `: {`.
_CANDIDATES = 16
_STRING_FORMATS = {"date": "2026-01-01", "date-time": "2026-01-01T00:00:00Z", "time": "00:00:00",
                   "email": "user@example.com", "uri": "https://example.com/", "uuid": "00000000-0000-4000-8000-000000000000"}


def json_answer(prompt: str, fallback_text: str) -> str | None:
    """The JSON text answering `prompt`, or None when it asks for no JSON."""
    schema_at = prompt.rfind(JSON_SCHEMA_INSTRUCTION)
    if schema_at >= 0:
        schema = _schema_after(prompt[schema_at + len(JSON_SCHEMA_INSTRUCTION):])
        if schema is not None:
            return json.dumps(_example(schema, schema, 0, _Budget(_BUDGET)), ensure_ascii=False)
    if JSON_OBJECT_INSTRUCTION in prompt:
        return json.dumps({"answer": fallback_text}, ensure_ascii=False)
    return None


def _schema_after(text: str) -> dict[str, Any] | None:
    # The instruction's next line is `Schema <name> (<description>): <schema as one line of JSON>`.
    # "\n" only: the schema is written with ensure_ascii=False, so U+2028 may stand inside it.
    line = next((line for line in text.split("\n") if line.startswith("Schema ")), "")
    decoder = json.JSONDecoder()
    start = line.find(": {")
    for _ in range(_CANDIDATES):
        if start < 0:
            return None
        try:
            schema, end = decoder.raw_decode(line, start + 2)
        except ValueError:
            schema, end = None, -1
        if isinstance(schema, dict) and end == len(line):
            return schema
        start = line.find(": {", start + 1)
    return None


class _Budget:
    """What is left of one answer's units: spent before each value is built or read."""

    def __init__(self, units: int) -> None:
        self.left = units

    def spend(self, units: int) -> bool:
        self.left -= units
        return self.left >= 0


def _example(schema: Any, root: dict[str, Any], depth: int, budget: _Budget) -> Any:  # noqa: PLR0911 - one return per kind
    # Spent first: a None past the depth is a value of the answer too.
    if not budget.spend(1) or not isinstance(schema, dict) or depth > _MAX_DEPTH:
        return None
    if "const" in schema:
        return _charged(schema["const"], budget)
    if isinstance(schema.get("enum"), list) and schema["enum"]:
        return _charged(schema["enum"][0], budget)
    if isinstance(ref := schema.get("$ref"), str):
        return _example(_local(root, ref), root, depth + 1, budget) if budget.spend(len(ref)) else None
    for key in ("anyOf", "oneOf"):
        if isinstance(schema.get(key), list) and schema[key]:
            return _example(schema[key][0], root, depth + 1, budget)
    kind = schema.get("type")
    if isinstance(kind, list):
        kind = next((k for k in kind if k != "null"), "null") if budget.spend(len(kind)) else None
    if kind is None and "properties" in schema:
        kind = "object"
    if kind == "object":
        properties = schema.get("properties") if isinstance(schema.get("properties"), dict) else {}
        required = schema.get("required") if isinstance(schema.get("required"), list) else []
        answer: dict[str, Any] = {}
        for name in required:
            if not budget.spend(1 + len(name) if isinstance(name, str) else 1):
                break
            if isinstance(name, str):
                answer[name] = _example(properties.get(name, {}), root, depth + 1, budget)
        return answer
    if kind == "array":
        count = min(_whole(schema.get("minItems"), 0), _MAX_ITEMS)
        items: list[Any] = []
        while len(items) < count and budget.left > 0:
            items.append(_example(schema.get("items", {}), root, depth + 1, budget))
        return items
    if kind == "string":
        fitting = _STRING_FORMATS.get(fmt, "example") if isinstance(fmt := schema.get("format"), str) else "example"
        return _charged(fitting.ljust(min(_whole(schema.get("minLength"), 0), _MAX_STRING), "x"), budget)
    if kind in ("integer", "number"):
        if _is_number(low := schema.get("minimum")):
            return _charged(math.ceil(low), budget)
        if _is_number(low := schema.get("exclusiveMinimum")):
            return _charged(math.floor(low) + 1, budget)
        return 0
    if kind == "boolean":
        return False
    return None


def _charged(value: Any, budget: _Budget) -> Any:
    """`value` if the budget pays for its JSON text (a schema's constant may be as large as its body)."""
    return value if budget.spend(len(json.dumps(value, ensure_ascii=False))) else None


def _local(root: dict[str, Any], ref: str) -> Any:
    """A `#/...` reference inside the schema itself (pydantic's `$defs`); anything else is None."""
    if not ref.startswith("#"):
        return None
    node: Any = root
    for part in filter(None, ref[1:].split("/")):
        node = node.get(part.replace("~1", "/").replace("~0", "~")) if isinstance(node, dict) else None
    return node


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _whole(value: object, default: int) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else default
