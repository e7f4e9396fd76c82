"""JSON-schema checks with the `jsonschema` library: the dialect a schema names in
`$schema`, Draft 2020-12 when it names none (OpenAI's structured outputs use a subset)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from jsonschema import Draft202012Validator
from jsonschema.exceptions import SchemaError
from jsonschema.protocols import Validator
from jsonschema.validators import validator_for


def validator(schema: Mapping[str, Any]) -> Validator:
    return validator_for(schema, default=Draft202012Validator)(schema)


def schema_problem(schema: Mapping[str, Any]) -> str | None:
    """Why `schema` is not a valid JSON schema, or None."""
    try:
        validator_for(schema, default=Draft202012Validator).check_schema(schema)
    except SchemaError as exc:
        return exc.message
    return None


def first_violation(schema: Mapping[str, Any], instance: Any) -> str | None:
    """The first way `instance` breaks `schema` (with where), or None when it matches."""
    error = next(iter(validator(schema).iter_errors(instance)), None)
    if error is None:
        return None
    where = "".join(f"[{part!r}]" for part in error.absolute_path)
    return f"{where or 'the value'}: {error.message}"
