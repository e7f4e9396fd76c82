"""JSON-schema checks with the `jsonschema` library: the dialect a schema names in
`$schema`, Draft 2020-12 when it names none (OpenAI's structured outputs use a subset).

Schemas come from clients and the values checked against them from GPT-Omni (which a
client can steer), so both are bounded: a schema's size and nesting when the request is
read (`schema_problem`), and the time checking one answer takes (`first_violation`, every
value of an answer checked under one `answer_deadline`: 40 fenced values each given their
own 0.25 s were 10 s a reading): every keyword looks at the deadline before it runs (a
1.4 KB schema of `allOf`s of two `$ref`s per level doubles the work at each level: 20
levels were 22 s on the event loop),
patterns run on the `regex` engine with the time left (Python's `re` backtracks without
limit), and `uniqueItems` is one pass over canonical keys (jsonschema compares unhashable
items pairwise: 8,000 objects were 41 s).
"""

from __future__ import annotations

import hashlib
import json
import time
from collections import OrderedDict
from collections.abc import Iterator, Mapping
from typing import Any

import orjson
import regex
from jsonschema import Draft202012Validator, ValidationError, validators
from jsonschema.exceptions import SchemaError
from jsonschema.protocols import Validator
from jsonschema.validators import validator_for
from referencing import Registry
from referencing.exceptions import Unresolvable
from referencing.jsonschema import DRAFT202012, specification_with

MAX_SCHEMA_BYTES = 32_768  # one schema, as compact JSON
MAX_SCHEMA_DEPTH = 32  # nested objects / arrays (jsonschema recurses on them)
# A value checked against a schema: jsonschema recurses on it too, and near Python's
# recursion limit the RecursionError is raised inside rpds (referencing's maps), which turns
# it into a PanicException no `except Exception` catches (200 levels did, for a $ref schema).
MAX_VALUE_DEPTH = 64
CHECK_SECONDS = 0.25  # checking one answer against schemas: all its values, all keywords together
# What a `$ref` may resolve to beyond the schema itself: nothing. Given no registry,
# jsonschema fetches an unknown `$ref` over HTTP, so a client could make the relay GET any
# URL (blocking its event loop while it did); with one, retrieval fails at once.
_NO_FETCH: Registry[Any] = Registry()
_REFS = ("$ref", "$dynamicRef")


def _depth(value: Any, limit: int) -> int:
    """How deeply `value` nests, counted without recursion and only up to `limit` + 1."""
    deepest, level = 0, [value]
    while level:
        deepest += 1
        if deepest > limit:
            return deepest
        level = [child for item in level for child in
                 (item.values() if isinstance(item, dict) else item if isinstance(item, list) else ())]
    return deepest - 1


def _compact(schema: Mapping[str, Any]) -> bytes:
    try:
        return orjson.dumps(schema)
    except orjson.JSONEncodeError:  # an integer beyond 64 bits, from a reader other than orjson
        return json.dumps(schema, separators=(",", ":")).encode()


def _problem(schema: Mapping[str, Any], size: int) -> str | None:
    if size > MAX_SCHEMA_BYTES:
        return f"the schema is {size} bytes as JSON, more than the relay's {MAX_SCHEMA_BYTES}-byte limit"
    if _depth(schema, MAX_SCHEMA_DEPTH) > MAX_SCHEMA_DEPTH:
        return f"the schema nests deeper than the relay's limit of {MAX_SCHEMA_DEPTH} levels"
    try:
        validator_for(schema, default=Draft202012Validator).check_schema(schema)
    except SchemaError as exc:
        return exc.message
    return _unresolved_ref(schema)


def _unresolved_ref(schema: Mapping[str, Any]) -> str | None:
    """Each `$ref` must resolve within the schema (`#/$defs/...`, `#`, a sub-schema's
    `$id`), as OpenAI's structured outputs require: the relay fetches no schema."""
    specification = specification_with(str(schema.get("$schema", "")), default=DRAFT202012)
    root = specification.create_resource(schema)
    # Crawled once, here: an uncrawled registry crawls the whole schema again at every
    # anchor or `$id` lookup (600 `$anchor`/`$ref` pairs were 1.3 s, quadratic).
    registry = _NO_FETCH.with_resource(root.id() or "", root).crawl()
    pending = [(schema, registry.resolver(base_uri=root.id() or ""))]
    while pending:
        node, resolver = pending.pop()
        if isinstance(node, dict):
            if node is not schema and ("$id" in node or "id" in node):
                resolver = resolver.in_subresource(specification.create_resource(node))
            for key in _REFS:
                if isinstance(ref := node.get(key), str):
                    try:
                        resolver.lookup(ref)
                    except Unresolvable:
                        return f"the schema's {key} {ref!r} does not resolve within the schema (the relay fetches none)"
            children: Any = node.values()
        else:
            children = node
        pending.extend((child, resolver) for child in children if isinstance(child, (dict, list)))
    return None


def schema_problem(schema: Mapping[str, Any]) -> str | None:
    """Why `schema` is not a usable JSON schema (too large, too deep, invalid), or None."""
    return _problem(schema, len(_compact(schema)))


class SchemaChecks:
    """`schema_problem`, remembered. Checking a schema against the 2020-12 meta-schema
    costs about a millisecond, and agents send the same tools with every request: each
    verdict is kept under the digest of the schema's JSON, for the `max_entries` schemas
    seen most recently (one instance per process: state.SCHEMA_CHECKS)."""

    def __init__(self, max_entries: int = 1024) -> None:
        self._verdicts: OrderedDict[bytes, str | None] = OrderedDict()
        self._max_entries = max_entries

    def problem(self, schema: Mapping[str, Any]) -> str | None:
        compact = _compact(schema)
        if len(compact) > MAX_SCHEMA_BYTES:
            return _problem(schema, len(compact))  # never hashed, never kept
        key = hashlib.sha256(compact).digest()
        if key in self._verdicts:
            self._verdicts.move_to_end(key)
            return self._verdicts[key]
        verdict = self._verdicts[key] = _problem(schema, len(compact))
        if len(self._verdicts) > self._max_entries:
            self._verdicts.popitem(last=False)
        return verdict


def _canonical(value: Any) -> Any:
    """A hashable key equal for values JSON Schema calls equal: 1 and 1.0 alike, true and
    1 not, objects whatever their key order."""
    if isinstance(value, bool) or value is None:
        return ("literal", value)
    if isinstance(value, (int, float)):
        return ("number", value)
    if isinstance(value, str):
        return ("string", value)
    if isinstance(value, list):
        return ("array", tuple(_canonical(item) for item in value))
    if isinstance(value, dict):
        return ("object", frozenset((key, _canonical(item)) for key, item in value.items()))
    return ("other", repr(value))


def _unique_items(validator: Validator, unique: Any, instance: Any, schema: Any) -> Iterator[ValidationError]:
    if not unique or not validator.is_type(instance, "array"):
        return
    seen: set[Any] = set()
    for index, item in enumerate(instance):
        key = _canonical(item)
        if key in seen:
            yield ValidationError(f"item {index} repeats an earlier one (uniqueItems)")
            return
        seen.add(key)


def answer_deadline() -> float:
    """When checking the values of the answer being read must end (`time.monotonic()`)."""
    return time.monotonic() + CHECK_SECONDS


def _bounded_validator(schema: Mapping[str, Any], deadline: float) -> Validator:
    def timed(check: Any) -> Any:
        def checked(validator: Validator, value: Any, instance: Any, schema: Any) -> Iterator[ValidationError]:
            if time.monotonic() > deadline:
                raise TimeoutError
            yield from check(validator, value, instance, schema) or ()
        return checked

    def search(pattern: str, text: str) -> bool:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError
        return regex.search(pattern, text, timeout=remaining) is not None

    def pattern(validator: Validator, patrn: str, instance: Any, schema: Any) -> Iterator[ValidationError]:
        if validator.is_type(instance, "string") and not search(patrn, instance):
            yield ValidationError(f"{instance!r} does not match {patrn!r}")

    def pattern_properties(validator: Validator, patterns: Mapping[str, Any], instance: Any,
                           schema: Any) -> Iterator[ValidationError]:
        if not validator.is_type(instance, "object"):
            return
        for patrn, subschema in patterns.items():
            for key, value in instance.items():
                if search(patrn, key):
                    yield from validator.descend(value, subschema, path=key, schema_path=patrn)

    base = validator_for(schema, default=Draft202012Validator)
    keywords = {**base.VALIDATORS, "pattern": pattern, "patternProperties": pattern_properties,
                "uniqueItems": _unique_items}
    bounded = validators.extend(base, {name: timed(check) for name, check in keywords.items()})
    return bounded(schema, registry=_NO_FETCH)


def first_violation(schema: Mapping[str, Any], instance: Any, deadline: float) -> str | None:
    """The first way `instance` breaks `schema` (with where), or None when it matches;
    checked until `deadline` (`answer_deadline()`, one for all the values of an answer)."""
    if _depth(instance, MAX_VALUE_DEPTH) > MAX_VALUE_DEPTH:
        return f"the value nests deeper than the relay's limit of {MAX_VALUE_DEPTH} levels"
    try:
        error = next(iter(_bounded_validator(schema, deadline).iter_errors(instance)), None)
    except TimeoutError:
        return f"checking the answer against its schemas took longer than the relay's {CHECK_SECONDS}-second limit"
    except RecursionError:
        return "the value nests too deep to be checked"
    except regex.error as exc:
        return f"a pattern of the schema cannot be used: {exc}"
    except Unresolvable:  # refused when the request was read; never fetched either way
        return "a $ref of the schema does not resolve"
    if error is None:
        return None
    where = "".join(f"[{part!r}]" for part in error.absolute_path)
    return f"{where or 'the value'}: {error.message}"
