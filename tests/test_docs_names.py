"""The docs name only what exists: every source file, module and `GPTOMNI_*` variable that
README.md and docs/*.md mention is in the tree, so a rename or a removal that forgets a
doc fails here instead of leaving readers a dead name."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from gptomni_operator.settings import OperatorSettings
from gptomni_relay.settings import RelaySettings

REPO = Path(__file__).resolve().parent.parent
DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
TREE = ("service", "operator", "tests", "scripts", "bench", "charts", "k8s", "docs", ".ci")

# `service/gptomni_relay/core/pool.py`, `core/usage.py`, `state.py`, `scripts/test.sh`; not
# an absolute path (a mount point or a URL path: those are run-time names).
SOURCE_NAME = re.compile(r"(?<![\w/.-])(?:[\w.-]+/)*[\w-]+\.(?:py|sh)\b(?!/)")
MODULE_NAME = re.compile(r"\bgptomni_(?:relay|common|operator)(?:\.\w+)+")
VARIABLE = re.compile(r"\bGPTOMNI_[A-Z0-9_]*[A-Z0-9]\b")


def tree_files() -> list[str]:
    return [str(path.relative_to(REPO)) for top in TREE for path in (REPO / top).rglob("*")
            if path.is_file() and ".venv" not in path.parts and "__pycache__" not in path.parts]


FILES = tree_files()


def exists(name: str) -> bool:
    """A path from the repository root, or the tail of one (`core/usage.py`, `state.py`)."""
    return any(file == name or file.endswith("/" + name) for file in FILES)


def module_exists(dotted: str) -> bool:
    parts = dotted.split(".")
    roots = {"gptomni_relay": "service", "gptomni_common": "service", "gptomni_operator": "operator"}
    base = REPO / roots[parts[0]] / Path(*parts)
    return base.with_suffix(".py").is_file() or (base / "__init__.py").is_file()


def settings_variables() -> set[str]:
    names = {"GPTOMNI_" + field.upper() for field in RelaySettings.model_fields}
    prefix = OperatorSettings.model_config["env_prefix"]
    names |= {prefix + field.upper() for field in OperatorSettings.model_fields}
    return names


def read_in_tree(variable: str) -> bool:
    """A variable of the scripts or the tests (`GPTOMNI_KUBE_CACHE`), not a setting."""
    return any(variable in (REPO / file).read_text(errors="replace") for file in FILES
               if file.startswith(("scripts/", "tests/", ".ci/")) and not file.endswith(".md"))


def mentions(pattern: re.Pattern[str]) -> list[tuple[str, str]]:
    return sorted({(doc.name, match.group(0)) for doc in DOCS for match in pattern.finditer(doc.read_text())})


@pytest.mark.parametrize("doc, name", mentions(SOURCE_NAME))
def test_every_named_source_file_exists(doc: str, name: str) -> None:
    assert exists(name), f"{doc} names {name}, which is not in the tree"


@pytest.mark.parametrize("doc, name", mentions(MODULE_NAME))
def test_every_named_module_exists(doc: str, name: str) -> None:
    assert module_exists(name), f"{doc} names the module {name}, which does not exist"


def test_every_named_variable_is_a_setting_or_read_by_a_script() -> None:
    known = settings_variables()
    prefixes = {name for _, name in mentions(re.compile(r"\bGPTOMNI_[A-Z_]*_(?=\*)"))}  # `GPTOMNI_OPERATOR_*`
    unknown = [(doc, name) for doc, name in mentions(VARIABLE)
               if name not in known and name + "_" not in prefixes and not read_in_tree(name)]
    assert unknown == []


def test_the_check_sees_a_dead_name() -> None:
    assert not exists("service/gptomni_relay/prompt.py")
    assert exists("service/gptomni_relay/core/conversation.py") and exists("core/usage.py")
    assert not module_exists("gptomni_relay.prompt") and module_exists("gptomni_relay.healthcheck")
    assert [m.group(0) for m in SOURCE_NAME.finditer("see `core/pool.py`, /srv/x.py, helm.sh/chart and scripts/test.sh.")] == [
        "core/pool.py", "scripts/test.sh"]
