"""Which module may import which: read from the source (the AST of every module), so a
boundary crossed in a function body or behind `TYPE_CHECKING` is found too.

- `gptomni_relay.core` is the domain: it knows neither HTTP nor OpenAI's wire format nor
  how the relay is watched or configured. It imports nothing of the relay outside core
  and none of the edge's frameworks; metrics and tracing watch it through the observer
  protocol (core/attempt_observer.py), the configuration reaches it as plain arguments.
- `gptomni_common` is shared by the relay and the operator: it imports neither.
- `gptomni_relay.edge` is the only code that imports uvicorn: the guard leans on its
  private classes (tests/test_uvicorn_contract.py), so what depends on them stays in one place.
- `gptomni_relay.settings` is a leaf: nothing it imports, however indirectly, is of the
  relay, and it reads no file (a `*_FILE` setting is a path; its user reads it).
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

SERVICE = Path(__file__).resolve().parent.parent / "service"
CORE = SERVICE / "gptomni_relay" / "core"
COMMON = SERVICE / "gptomni_common"

# The edge's frameworks and the relay's watchers; core reaches GPT-Omni through
# gptomni_common.upstream, never with an HTTP client of its own.
EDGE_PACKAGES = ("fastapi", "starlette", "uvicorn", "httptools", "prometheus_client", "opentelemetry",
                 "pydantic_settings", "aiohttp", "httpx")


def imports_of(path: Path, service: Path = SERVICE) -> Iterator[tuple[int, str]]:
    """(line, absolute module name) of every import in `path`, relative ones resolved."""
    package = path.relative_to(service).with_suffix("").parts[:-1]
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = ".".join(package[: len(package) - node.level + 1])
                yield node.lineno, f"{base}.{node.module}" if node.module else base
            else:
                yield node.lineno, str(node.module)


def within(module: str, package: str) -> bool:
    return module == package or module.startswith(package + ".")


def crossings(root: Path, allowed: str, forbidden: tuple[str, ...], service: Path = SERVICE) -> list[str]:
    found = []
    for path in sorted(root.rglob("*.py")):
        for line, module in imports_of(path, service):
            if any(within(module, name) for name in forbidden) and not within(module, allowed):
                found.append(f"{path.relative_to(service)}:{line} imports {module}")
    return found


def source_of(module: str, service: Path = SERVICE) -> Path | None:
    """The file of a module of this repository's `service/` tree, or None (stdlib, third party)."""
    base = service.joinpath(*module.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def project_imports(module: str, service: Path = SERVICE) -> set[str]:
    """Every module of the tree that `module` imports, directly or through another one."""
    seen: set[str] = set()
    todo = [module]
    while todo:
        path = source_of(todo.pop(), service)
        if path is None:
            continue
        for _, name in imports_of(path, service):
            if name not in seen and source_of(name, service) is not None:
                seen.add(name)
                todo.append(name)
    return seen


FILE_READS = {"open", "read_text", "read_bytes", "read_bounded", "load", "loads"}


def test_settings_is_a_leaf() -> None:
    relay_modules = {name for name in project_imports("gptomni_relay.settings") if within(name, "gptomni_relay")}
    assert relay_modules == set()
    calls = [node.func for node in ast.walk(ast.parse((SERVICE / "gptomni_relay" / "settings.py").read_text()))
             if isinstance(node, ast.Call)]
    names = {call.id if isinstance(call, ast.Name) else call.attr for call in calls
             if isinstance(call, ast.Name | ast.Attribute)}
    assert names & FILE_READS == set()


def test_core_imports_nothing_of_the_edge() -> None:
    assert crossings(CORE, "gptomni_relay.core", ("gptomni_relay", "gptomni_operator", *EDGE_PACKAGES)) == []


def test_only_the_edge_imports_uvicorn() -> None:
    relay = SERVICE / "gptomni_relay"
    found = [f"{path.relative_to(SERVICE)}:{line} imports {module}"
             for path in sorted(relay.rglob("*.py")) if path.relative_to(relay).parts[0] != "edge"
             for line, module in imports_of(path) if within(module, "uvicorn") or within(module, "httptools")]
    assert found == []


def test_common_imports_neither_program() -> None:
    assert crossings(COMMON, "gptomni_common", ("gptomni_relay", "gptomni_operator")) == []


@pytest.mark.parametrize("source, expected", [
    ("from gptomni_relay.metrics import RelayMetrics", ["gptomni_relay/core/bad.py:1 imports gptomni_relay.metrics"]),
    ("def f():\n    from ..settings import RelaySettings", ["gptomni_relay/core/bad.py:2 imports gptomni_relay.settings"]),
    ("import opentelemetry.trace", ["gptomni_relay/core/bad.py:1 imports opentelemetry.trace"]),
    ("from . import pool\nfrom .shaping import answer", []),
])
def test_the_check_sees_a_crossing(tmp_path: Path, source: str, expected: list[str]) -> None:
    core = tmp_path / "gptomni_relay" / "core"
    core.mkdir(parents=True)
    (core / "bad.py").write_text(source + "\n")
    assert crossings(core, "gptomni_relay.core", ("gptomni_relay", *EDGE_PACKAGES), tmp_path) == expected
