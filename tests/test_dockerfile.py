"""The image recipe: linted by hadolint, and its shape pinned.

The image itself is built and run by a real engine in tests/test_image_container.py.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DOCKERFILE = ROOT / "Dockerfile"


def test_hadolint_is_clean() -> None:
    hadolint = Path(sys.executable).parent / "hadolint"
    result = subprocess.run([str(hadolint), "--failure-threshold", "info", str(DOCKERFILE)],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


def test_dockerfile_shape() -> None:
    text = DOCKERFILE.read_text()
    stages = [line for line in text.splitlines() if line.startswith("FROM ")]
    assert stages == ["FROM python:3.11-slim AS build", "FROM python:3.11-slim"]
    final = text.split("FROM python:3.11-slim\n", 1)[1]
    assert "USER 10001:10001" in final and "PYTHONUNBUFFERED=1" in final
    # Exec form, and no --host/--port: GPTOMNI_HOST and GPTOMNI_PORT must decide.
    assert final.rstrip().endswith('\nCMD ["gptomni-relay"]')
    assert "pip" not in final and "gcc" not in final  # no build tools or caches in the final stage
    assert "org.opencontainers.image.source" in final
    assert "RUN sh scripts/install-into-venv.sh /opt/gptomni /src" in text

