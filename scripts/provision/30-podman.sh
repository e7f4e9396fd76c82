#!/usr/bin/env bash
# The container tier (tests/test_image_container.py): Debian's podman, rootful, and a
# local stand-in for the Dockerfile's base image `python:3.11-slim`, since no image
# registry is reachable from these machines. scripts/build-image.sh then builds the
# Dockerfile unchanged with --pull=never.
#
# The stand-in is Debian bookworm's Python 3.11 made with debootstrap, NOT the official
# image (see docs/deploy.md). It is cached outside the clone ($CACHE_DIR and podman's
# own storage) and only rebuilt when missing or when its recipe (this file's version
# string, or the host's extra CA certificates) changes. Idempotent; ~1 s when cached.
set -euo pipefail
cd "$(dirname "$0")/../.."
# shellcheck source=../podman/env.sh
source scripts/podman/env.sh

PACKAGES=(podman runc conmon catatonit golang-github-containers-common netavark aardvark-dns
          iptables slirp4netns uidmap containernetworking-plugins debootstrap)
# Bump when the stand-in's recipe below changes.
RECIPE_VERSION=1
SUITE=bookworm  # Debian's Python 3.11 (trixie has 3.13)

if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null; then
    echo "30-podman: needs root on Debian (apt-get)" >&2
    exit 1
fi

missing=()
for package in "${PACKAGES[@]}"; do
    dpkg-query -W -f '${Status}' "$package" 2>/dev/null | grep -q "install ok installed" || missing+=("$package")
done
if [ ${#missing[@]} -gt 0 ]; then
    # Other provision steps may hold the apt locks: wait for them rather than fail.
    apt_options=(-o DPkg::Lock::Timeout=300 -o Acquire::Retries=3)
    apt-get "${apt_options[@]}" update -qq
    DEBIAN_FRONTEND=noninteractive apt-get "${apt_options[@]}" install -y -qq --no-install-recommends \
        "${missing[@]}" >/dev/null
fi

# The recipe's identity: a new CA bundle on the host means a new stand-in.
extra_cas=(/usr/local/share/ca-certificates/*.crt)
[ -e "${extra_cas[0]}" ] || extra_cas=()
recipe="$( { echo "$RECIPE_VERSION $SUITE"; cat "${extra_cas[@]}" /dev/null; } | sha256sum | cut -c1-16)"

if podman image exists "$BASE_IMAGE"; then
    label="$(podman image inspect --format '{{index .Labels "org.gptomni.stand-in"}}' "$BASE_IMAGE")"
    if [ "$label" = "$recipe" ]; then
        exit 0
    elif [ -z "$label" ] || [ "$label" = "<no value>" ]; then
        echo "30-podman: $BASE_IMAGE is a real image (not our stand-in); using it" >&2
        exit 0
    fi
    echo "30-podman: stand-in recipe changed ($label -> $recipe); rebuilding" >&2
fi

mkdir -p "$CACHE_DIR"
tarball="$CACHE_DIR/python-3.11-slim-standin-$recipe.tar"
if [ ! -s "$tarball" ]; then
    mirror="$(sed -n 's/^URIs: *\([^ ]*\).*/\1/p' /etc/apt/sources.list.d/debian.sources 2>/dev/null | head -n1)"
    mirror="${mirror:-http://deb.debian.org/debian}"
    rootfs="$(mktemp -d "$CACHE_DIR/rootfs.XXXXXX")"
    # debootstrap mounts /proc, /sys (and may bind /dev) inside the target: unmount
    # before packing or deleting it, and never let rm cross into another file system.
    unmount_rootfs() {
        awk -v root="$rootfs/" 'index($2, root) == 1 {print $2}' /proc/mounts | sort -r \
            | while read -r mount; do umount -l "$mount"; done
    }
    trap 'unmount_rootfs; rm -rf --one-file-system "$rootfs"' EXIT
    debootstrap --variant=minbase \
        --include=python3.11,python3-venv,python3-pip,ca-certificates,netbase,tzdata \
        "$SUITE" "$rootfs" "$mirror" >"$CACHE_DIR/python-3.11-slim-standin.debootstrap.log" 2>&1 \
        || { tail -n 20 "$CACHE_DIR/python-3.11-slim-standin.debootstrap.log" >&2; exit 1; }
    unmount_rootfs
    # Where the official image has its interpreter and pip.
    ln -sf /usr/bin/python3.11 "$rootfs/usr/local/bin/python"
    ln -sf /usr/bin/python3.11 "$rootfs/usr/local/bin/python3"
    printf '#!/bin/sh\nexec /usr/bin/python3.11 -m pip "$@"\n' >"$rootfs/usr/local/bin/pip"
    chmod 755 "$rootfs/usr/local/bin/pip"
    # HTTPS from a build goes through the same TLS-inspecting egress as the host does.
    if [ ${#extra_cas[@]} -gt 0 ]; then
        cp "${extra_cas[@]}" "$rootfs/usr/local/share/ca-certificates/"
        chroot "$rootfs" update-ca-certificates >/dev/null 2>&1
    fi
    # Like the official slim image: no package lists or downloaded packages.
    rm -rf "$rootfs"/var/lib/apt/lists/* "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/log/*.log
    tar -C "$rootfs" --numeric-owner --one-file-system -cf "$tarball.part" .
    mv "$tarball.part" "$tarball"
    find "$CACHE_DIR" -maxdepth 1 -name 'python-3.11-slim-standin-*.tar' ! -name "$(basename "$tarball")" -delete
fi

podman import --quiet \
    --change 'ENV PATH=/usr/local/bin:/usr/local/sbin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'ENV LANG=C.UTF-8' \
    --change "LABEL org.gptomni.stand-in=$recipe" \
    --change 'CMD ["python3"]' \
    "$tarball" localhost/python:3.11-slim >/dev/null
podman tag localhost/python:3.11-slim "$BASE_IMAGE"
echo "30-podman: stand-in $BASE_IMAGE ready (Debian $SUITE Python 3.11, recipe $recipe)" >&2
