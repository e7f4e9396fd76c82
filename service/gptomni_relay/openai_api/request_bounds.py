"""Request bounds: how much work a parsed JSON body may cost, checked before validation.

The body limit bounds bytes, not work: `{"messages": [1, 1, ... x500,000]}` is under 1 MB,
and pydantic validating it collects 500,000 errors and turns each into a dict (~500 MB,
seconds of a blocked event loop for every client). `check_request_bounds` walks the
parsed body once, containers only, and refuses with a 400 naming the param at the first
bound passed: nesting depth, the length of any one array (each route names its own
arrays' caps, e.g. `messages`, a message's `content` parts, `tools`, `stop`), and the
values in the whole body. What is left for pydantic is then a few thousand values at
most, a few milliseconds of work.

A client's JSON schemas (tools' parameters, a response format) cost more than their bytes:
checking one against its dialect's meta-schema costs ~0.1 ms of CPU for every object in it
(25 tools of 500 `patternProperties` each, 800 KB, were 3 s a request), and every regular
expression in it is compiled. `check_schema_bounds` counts them over all of a request's
schemas before any is checked, a 400 naming the schema that passes the bound.

This is the one place those counts are written: the schemas carry no `max_length` of
their own, and every body-taking route reads its body through
`request_reading.validated`, which takes the route's `RequestBounds` (no default, so a new
route cannot forget). docs/security.md lists the numbers.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from gptomni_relay.core.shaping import MAX_SCHEMA_DEPTH, MAX_TOOLS
from gptomni_relay.openai_api.errors import bad_request

MAX_STOP_SEQUENCES = 4  # OpenAI's own limit, chat and legacy completions


@dataclass(frozen=True)
class RequestBounds:
    """`array_caps` maps an array's place, written `messages` or `messages[].content`
    (`[]`: any item of the array), to its most items; any other array may hold
    `max_array_items`."""

    array_caps: Mapping[str, int] = field(default_factory=lambda: MappingProxyType({}))
    max_array_items: int = 1024
    # Arrays and objects inside each other. A tool's or response format's JSON schema may
    # nest MAX_SCHEMA_DEPTH levels (its own check names the param better), a few levels
    # down the body; beyond this depth nothing the relay accepts can be, and recursive
    # code (encoders, the schema check) stays far from Python's recursion limit.
    max_depth: int = 128
    max_values: int = 16384  # array items and object members in the whole body


CHAT_COMPLETIONS_BOUNDS = RequestBounds(MappingProxyType({
    "messages": 2048,
    "messages[].content": 256,
    "messages[].tool_calls": MAX_TOOLS,
    "tools": MAX_TOOLS,
    "functions": MAX_TOOLS,
    "stop": MAX_STOP_SEQUENCES,
}))

RESPONSES_BOUNDS = RequestBounds(MappingProxyType({
    "input": 2048,
    "input[].content": 256,
    "input[].output": 256,  # a function_call_output's parts
    # Built-in tools are dropped (never offered) but still read; function tools are then
    # held to MAX_TOOLS by the shaping core, as in chat.
    "tools": 4 * MAX_TOOLS,
}))

COMPLETIONS_BOUNDS = RequestBounds(MappingProxyType({
    "prompt": 1024,  # several prompts or token ids are refused by name after validation
    "stop": MAX_STOP_SEQUENCES,
}))

assert RequestBounds.max_depth > MAX_SCHEMA_DEPTH + 8  # a schema's own bound fires first

# All of one request's schemas together (each is also held to MAX_SCHEMA_BYTES and
# MAX_SCHEMA_DEPTH on its own). Real clients are far below: the Codex CLI's 9 function
# tools are 55 objects and arrays and no pattern; a hundred MCP tools of ten parameters
# each would be about 1,200. The most allowed is checked in ~0.25 s of CPU, once: verdicts
# are remembered (state.SCHEMA_CHECKS), so an agent resending its tools pays nothing more.
MAX_SCHEMA_NODES = 2048  # objects and arrays
MAX_SCHEMA_PATTERNS = 256  # `pattern`s and `patternProperties` keys (propertyNames' are `pattern`s)
MAX_SCHEMA_PATTERN_CHARS = 16_384  # compiling costs ~0.5 us a character


def check_schema_bounds(schemas: Iterable[tuple[str, Any]]) -> None:
    """`schemas`: (param, schema) in the request's order. Raises a 400 naming the param of
    the schema with which the request's schemas pass a bound. Counts are conservative: a
    `pattern` string in an `enum` or `default` value counts like one in a schema."""
    nodes = patterns = chars = 0
    for param, schema in schemas:
        pending = [schema]
        while pending:
            node = pending.pop()
            if isinstance(node, dict):
                if isinstance(found := node.get("pattern"), str):
                    patterns, chars = patterns + 1, chars + len(found)
                if isinstance(keyed := node.get("patternProperties"), dict):
                    patterns, chars = patterns + len(keyed), chars + sum(len(key) for key in keyed)
                children: Iterable[Any] = node.values()
            elif isinstance(node, list):
                children = node
            else:
                continue
            nodes += 1
            if nodes > MAX_SCHEMA_NODES:
                raise bad_request(f"The request's JSON schemas (tools' parameters and the response format together) "
                                  f"hold more than {MAX_SCHEMA_NODES} objects and arrays; '{param}' passes that "
                                  "limit.", param=param, code="schema_too_complex")
            if patterns > MAX_SCHEMA_PATTERNS or chars > MAX_SCHEMA_PATTERN_CHARS:
                raise bad_request(f"The request's JSON schemas (tools' parameters and the response format together) "
                                  f"hold more than {MAX_SCHEMA_PATTERNS} regular expressions or more than "
                                  f"{MAX_SCHEMA_PATTERN_CHARS} characters of them; '{param}' passes that limit.",
                                  param=param, code="schema_too_complex")
            pending.extend(child for child in children if isinstance(child, (dict, list)))


def check_request_bounds(body: dict[str, Any], bounds: RequestBounds) -> None:
    """Raises a 400 (`param` names the place) at the first bound `body` passes."""
    # Places are spelt out only where a cap may apply (a prefix of a capped place); the
    # param an error names is put together from the parents only when one is raised.
    capped = {prefix for cap in bounds.array_caps for i in range(cap.count(".") + 1)
              for prefix in (cap.rsplit(".", i)[0], cap.rsplit(".", i)[0].removesuffix("[]"))}
    values = 0
    # (container, (parent's entry, key or index) or None, its place or None, depth)
    pending: list[tuple[Any, Any, str | None, int]] = [(body, None, "", 1)]
    while pending:
        entry = pending.pop()
        container, _, place, depth = entry
        if depth > bounds.max_depth:
            raise bad_request(f"The request nests arrays and objects more than {bounds.max_depth} levels deep.",
                              param=_param(entry), code="too_deeply_nested")
        values += len(container)
        if isinstance(container, list):
            cap = bounds.array_caps.get(place, bounds.max_array_items) if place else bounds.max_array_items
            if len(container) > cap:
                param = _param(entry)
                raise bad_request(f"'{param}' has {len(container)} items; at most {cap} are accepted.",
                                  param=param, code="too_many_items")
        if values > bounds.max_values:
            raise bad_request(f"The request holds more than {bounds.max_values} values in its arrays and objects.",
                              param=_param(entry), code="too_many_values")
        if isinstance(container, dict):
            for key, value in container.items():
                if isinstance(value, (dict, list)):
                    child = f"{place}.{key}" if place else key
                    pending.append((value, (entry, key), child if place is not None and child in capped else None,
                                    depth + 1))
        else:
            child_place = f"{place}[]" if place else None
            for index, value in enumerate(container):
                if isinstance(value, (dict, list)):
                    pending.append((value, (entry, index), child_place, depth + 1))


def _param(entry: tuple[Any, Any, str | None, int]) -> str | None:
    """`messages[3].content` for the entry of that container."""
    path: list[str | int] = []
    link = entry[1]
    while link is not None:
        parent, key = link
        path.append(key)
        link = parent[1]
    param = ""
    for key in reversed(path):
        param += f"[{key}]" if isinstance(key, int) else (f".{key}" if param else str(key))
    return param or None
