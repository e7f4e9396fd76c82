#!/usr/bin/env bash
# The real-client tier (tests/test_real_clients.py): the official Node SDK (`openai`) and
# the Codex CLI (`@openai/codex`, whose Linux binary ships inside its npm package), at the
# versions tests/node/package.json pins, installed from the npm registry into
# /var/cache/gptomni/npm-clients (outside the clone, kept across runs). Node comes from
# Debian when the machine has none (the SDK pinned supports Node 20). Idempotent: ~0 s when
# the cache already holds exactly these versions.
set -euo pipefail
cd "$(dirname "$0")/../.."

cache=/var/cache/gptomni/npm-clients
manifest=tests/node/package.json

if ! command -v node >/dev/null || ! command -v npm >/dev/null; then
    if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null; then
        echo "60-npm-clients: node and npm are missing and installing them needs root on Debian (apt-get)" >&2
        exit 1
    fi
    apt_options=(-o DPkg::Lock::Timeout=300 -o Acquire::Retries=3)
    apt-get "${apt_options[@]}" update -qq
    DEBIAN_FRONTEND=noninteractive apt-get "${apt_options[@]}" install -y -qq --no-install-recommends \
        nodejs npm >/dev/null
fi

if [ -f "$cache/package.json" ] && cmp -s "$manifest" "$cache/package.json" \
    && [ -x "$cache/node_modules/.bin/codex" ] && [ -f "$cache/node_modules/openai/package.json" ] \
    && [ -f "$cache/node_modules/js-tiktoken/package.json" ]; then
    exit 0
fi
mkdir -p "$cache"
cp "$manifest" "$cache/package.json.new"
mv "$cache/package.json.new" "$cache/package.json"
npm install --prefix "$cache" --no-audit --no-fund --no-save --loglevel=error >&2
"$cache/node_modules/.bin/codex" --version >&2
