"""Where the real npm clients are (scripts/provision/60-npm-clients.sh): fail under CI,
skip elsewhere, when they are missing."""

from __future__ import annotations

import shutil
from pathlib import Path

from tests.system_parts import missing

NPM_CLIENTS = Path("/var/cache/gptomni/npm-clients")
STEP = "60-npm-clients.sh"


def node() -> str:
    found = shutil.which("node")
    if found is None:
        missing("node", STEP)
    return str(found)


def node_modules() -> Path:
    modules = NPM_CLIENTS / "node_modules"
    if not (modules / "openai" / "package.json").is_file():
        missing(f"the npm package openai in {NPM_CLIENTS}", STEP)
    return modules


def codex() -> Path:
    binary = NPM_CLIENTS / "node_modules" / ".bin" / "codex"
    if not binary.is_file():
        missing(f"the Codex CLI (npm @openai/codex) in {NPM_CLIENTS}", STEP)
    return binary


def js_tiktoken() -> Path:
    package = NPM_CLIENTS / "node_modules" / "js-tiktoken"
    if not (package / "dist" / "lite.cjs").is_file():
        missing(f"the npm package js-tiktoken in {NPM_CLIENTS}", STEP)
    return package
