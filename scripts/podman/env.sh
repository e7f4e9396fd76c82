# Sourced by scripts/provision/30-podman.sh and scripts/build-image.sh: the engine
# settings file and the names the container tier shares with tests/container_engine.py.
podman_dir="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
export CONTAINERS_CONF="$podman_dir/containers.conf"
# The Dockerfile's base. No registry is reachable here, so provisioning makes a local
# stand-in under this name (Debian bookworm's Python 3.11, not the official image).
BASE_IMAGE="docker.io/library/python:3.11-slim"
# Outside the clone, so a kept machine reuses it.
CACHE_DIR="${GPTOMNI_CACHE_DIR:-/var/cache/gptomni}"
