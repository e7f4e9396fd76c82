"""`response_format` json_object / json_schema: what GPT-Omni is told, and the one JSON
value taken from its answer (fenced, bare or prose-wrapped), checked against the schema."""

from __future__ import annotations

import json

from gptomni_relay.core.errors import UnusableAnswer
from gptomni_relay.core.shaping.extraction import json_values
from gptomni_relay.core.shaping.schemas import answer_deadline, first_violation
from gptomni_relay.core.shaping.shape import JsonFormat

# The simulator (simulated_json.py) reads these from the prompt, as a model would.
JSON_OBJECT_INSTRUCTION = "Answer with one JSON object and nothing else: no prose, no code fence."
JSON_SCHEMA_INSTRUCTION = "Answer with one JSON value that matches this JSON schema and nothing else: no prose, no code fence."


def json_instructions(fmt: JsonFormat) -> str:
    if fmt.schema is None:
        return JSON_OBJECT_INSTRUCTION
    described = f" ({fmt.description})" if fmt.description else ""
    return (f"{JSON_SCHEMA_INSTRUCTION}\n"
            f"Schema {fmt.name or 'answer'}{described}: {json.dumps(fmt.schema, ensure_ascii=False)}")


def extract_json(fmt: JsonFormat, text: str) -> str:
    """The first JSON value in `text` that the format accepts, as compact JSON text."""
    problem = "the answer holds no JSON"
    deadline = answer_deadline()
    for found in json_values(text):
        if fmt.schema is None:
            if isinstance(found.value, dict):
                return json.dumps(found.value, ensure_ascii=False)
            problem = "the answer's JSON is not an object"
            continue
        violation = first_violation(fmt.schema, found.value, deadline)
        if violation is None:
            return json.dumps(found.value, ensure_ascii=False)
        problem = f"the answer's JSON does not match the schema: {violation}"
    raise UnusableAnswer(problem, code="invalid_json_output")
