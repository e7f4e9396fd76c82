#!/usr/bin/env bash
# The one command that sets up and runs the whole test suite (README "Two commands";
# .ci/run calls exactly this). A fresh machine has only Python 3.11: everything else
# is installed here, Python packages into .venv, system parts by scripts/provision/.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m venv .venv
.venv/bin/pip install -q -e '.[test]'
bash scripts/provision.sh
exec .venv/bin/python -m pytest "$@"
