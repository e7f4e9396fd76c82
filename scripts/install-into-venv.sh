#!/bin/sh
# Installs gptomni (relay + operator) into a fresh virtualenv at $1.
# The Dockerfile's build stage runs exactly this (tests/test_image_container.py builds it).
set -eu
venv="${1:?usage: install-into-venv.sh VENV_DIR [SOURCE_DIR]}"
source_dir="${2:-.}"
python3 -m venv "$venv"
"$venv/bin/pip" install --no-cache-dir --disable-pip-version-check --quiet "${source_dir}[operator]"
