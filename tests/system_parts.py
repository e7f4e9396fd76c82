"""Finding the system parts (binaries) that the real-component tiers need.

scripts/provision.sh installs them. A test that needs one and does not find it fails
under CI (CI=true: a tier must never vanish silently) and skips elsewhere, in both cases
with the exact command that installs it.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


def missing(what: str, provision_step: str) -> None:
    """Fail (CI) or skip (elsewhere) a test whose system part is absent."""
    message = f"{what} is not installed; run: bash {REPO / 'scripts' / 'provision' / provision_step}"
    if os.environ.get("CI") == "true":
        pytest.fail(message, pytrace=False)
    pytest.skip(message)


def require_binary(name: str, provision_step: str, *candidates: Path) -> Path:
    """The path of `name`: the first existing candidate, else from PATH, else fail/skip."""
    for candidate in candidates:
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return candidate
    found = shutil.which(name)
    if found is None:
        missing(name, provision_step)
    return Path(found)
