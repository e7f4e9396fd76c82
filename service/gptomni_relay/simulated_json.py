"""The simulator's answer to a prompt that asks for JSON: the smallest value the prompt's
schema accepts, so structured output (`chat.completions.parse`, `text.format`) works in
demo mode as it does against GPT-Omni, which reads the same instruction.

The schema is read from the relay's own instruction (core/shaping/json_output.py), the
way a model would read it. Only what a simple model gets right is honoured: types,
`const`, `enum`, required properties, `minItems`, `minLength`, numeric minimums, local
`$ref`s and the first branch of `anyOf` / `oneOf`; a schema beyond that gets a value the
relay's check refuses, and the relay answers as it would for a real model's miss.
"""

from __future__ import annotations

import json
import math
from typing import Any

from gptomni_relay.core.shaping.json_output import JSON_OBJECT_INSTRUCTION, JSON_SCHEMA_INSTRUCTION

_MAX_DEPTH = 12
_MAX_ITEMS = 64
_MAX_STRING = 4096
_STRING_FORMATS = {"date": "2026-01-01", "date-time": "2026-01-01T00:00:00Z", "time": "00:00:00",
                   "email": "user@example.com", "uri": "https://example.com/", "uuid": "00000000-0000-4000-8000-000000000000"}


def json_answer(prompt: str, fallback_text: str) -> str | None:
    """The JSON text answering `prompt`, or None when it asks for no JSON."""
    schema_at = prompt.rfind(JSON_SCHEMA_INSTRUCTION)
    if schema_at >= 0:
        schema = _schema_after(prompt[schema_at + len(JSON_SCHEMA_INSTRUCTION):])
        if schema is not None:
            return json.dumps(_example(schema, schema, 0), ensure_ascii=False)
    if JSON_OBJECT_INSTRUCTION in prompt:
        return json.dumps({"answer": fallback_text}, ensure_ascii=False)
    return None


def _schema_after(text: str) -> dict[str, Any] | None:
    # The instruction's next line is `Schema <name> (<description>): <schema as one line of JSON>`.
    line = next((line for line in text.splitlines() if line.startswith("Schema ")), "")
    decoder = json.JSONDecoder()
    start = line.find(": {")
    while start >= 0:
        try:
            schema, end = decoder.raw_decode(line, start + 2)
        except ValueError:
            schema, end = None, -1
        if isinstance(schema, dict) and end == len(line):
            return schema
        start = line.find(": {", start + 1)
    return None


def _example(schema: Any, root: dict[str, Any], depth: int) -> Any:  # noqa: PLR0911 - one return per kind
    if not isinstance(schema, dict) or depth > _MAX_DEPTH:
        return None
    if "const" in schema:
        return schema["const"]
    if isinstance(schema.get("enum"), list) and schema["enum"]:
        return schema["enum"][0]
    if isinstance(ref := schema.get("$ref"), str):
        return _example(_local(root, ref), root, depth + 1)
    for key in ("anyOf", "oneOf"):
        if isinstance(schema.get(key), list) and schema[key]:
            return _example(schema[key][0], root, depth + 1)
    kind = schema.get("type")
    if isinstance(kind, list):
        kind = next((k for k in kind if k != "null"), "null")
    if kind is None and "properties" in schema:
        kind = "object"
    if kind == "object":
        properties = schema.get("properties") if isinstance(schema.get("properties"), dict) else {}
        required = [name for name in schema.get("required", []) if isinstance(name, str)]
        return {name: _example(properties.get(name, {}), root, depth + 1) for name in required}
    if kind == "array":
        count = min(_whole(schema.get("minItems"), 0), _MAX_ITEMS)
        return [_example(schema.get("items", {}), root, depth + 1) for _ in range(count)]
    if kind == "string":
        fitting = _STRING_FORMATS.get(str(schema.get("format")), "example")
        return fitting.ljust(min(_whole(schema.get("minLength"), 0), _MAX_STRING), "x")
    if kind in ("integer", "number"):
        if _is_number(low := schema.get("minimum")):
            return math.ceil(low)
        if _is_number(low := schema.get("exclusiveMinimum")):
            return math.floor(low) + 1
        return 0
    if kind == "boolean":
        return False
    return None


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
