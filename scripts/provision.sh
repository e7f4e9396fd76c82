#!/usr/bin/env bash
# Installs the system parts the real-component test tiers need (a real kube-apiserver,
# Prometheus, Redis, podman, ...): every scripts/provision/*.sh in name order. Each step
# is idempotent and caches what it builds outside the clone, so a kept machine reuses it.
#
# With CI=true a step that fails fails the run; elsewhere (no root, not Debian) it warns
# and the tests of that tier skip with the step's own instruction.
set -uo pipefail
cd "$(dirname "$0")/.."
status=0
for step in scripts/provision/*.sh; do
    [ -e "$step" ] || continue
    started=$SECONDS
    if bash "$step"; then
        echo "provision: $(basename "$step") ready ($((SECONDS - started)) s)" >&2
    elif [ "${CI:-}" = "true" ]; then
        echo "provision: $(basename "$step") FAILED; CI needs every tier" >&2
        status=1
    else
        echo "provision: $(basename "$step") failed; its test tier will skip (run: sudo bash $step)" >&2
    fi
done
exit $status
