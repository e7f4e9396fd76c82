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
stage=localhost/gptomni-build-stage:latest
# The images the two tags name now: once the build moved the tags on, those are what this
# script made last time, and the only ones it removes (with their untagged intermediate
# images). No prune: on a shared machine that would reach other builds' intermediate
# images, mid-build, and fail on any image a container still uses.
replaced=()
for name in "$stage" "$tag"; do
    if id="$(podman image inspect --format '{{.Id}}' "$name" 2>/dev/null)"; then
        replaced+=("$id")
    fi
done
# The build stage gets a tag of its own, so it stays the layer cache of the next build
# (the slow step, pip).
"${build[@]}" --target build -t "$stage" . >/dev/null
"${build[@]}" -t "$tag" . >/dev/null
# Best-effort: an old image still tagged (unchanged, or tagged by someone else) or used by
# a container stays, and the build is not failed for it.
for id in "${replaced[@]}"; do
    if [[ "$(podman image inspect --format '{{len .RepoTags}}' "$id" 2>/dev/null)" == 0 ]]; then
        podman image rm "$id" >/dev/null 2>&1 || echo "build-image: kept the replaced image ${id:0:12} (still in use)" >&2
    fi
done
echo "$tag"
