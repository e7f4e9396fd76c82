#!/usr/bin/env bash
# Builds the image from the Dockerfile, unchanged, with podman (what the container test
# tier runs; `docker build` of the same Dockerfile is what a release uses).
#
#   bash scripts/build-image.sh [TAG]        (default TAG: localhost/gptomni:dev)
#
# --pull=never: the base `python:3.11-slim` must already be local; here that is the
# Debian stand-in made by scripts/provision/30-podman.sh. --format docker keeps the
# Dockerfile's HEALTHCHECK (the OCI format has no field for it). --network host: the
# build's one RUN step (pip from PyPI) uses the host's network, with no bridge set up.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=podman/env.sh
source scripts/podman/env.sh
tag="${1:-localhost/gptomni:dev}"
if ! podman image exists "$BASE_IMAGE"; then
    echo "build-image: no local $BASE_IMAGE; run: bash scripts/provision/30-podman.sh" >&2
    exit 1
fi
build=(podman build --quiet --pull=never --format docker --network host -f Dockerfile)
# The build stage gets a tag of its own, so it stays the layer cache of the next build
# (the slow step, pip) while the prune below drops what older builds left behind: only
# untagged images made on the stand-in base (it labels them), nothing of anyone else's.
"${build[@]}" --target build -t localhost/gptomni-build-stage:latest . >/dev/null
"${build[@]}" -t "$tag" . >/dev/null
podman image prune --force --filter label=org.gptomni.stand-in >/dev/null
echo "$tag"
