#!/usr/bin/env bash
# The real-API-server tier (tests/test_operator_apiserver.py): a real kube-apiserver
# v1.20.2 and etcd 3.4, from Debian bookworm's packages alone (no registry but Debian's
# is reachable from these machines, and no prebuilt kube-apiserver exists there):
#
# - kube-apiserver is compiled from bookworm's source package `kubernetes` (the upstream
#   v1.20.2 tree with vendor/) with bookworm's Go, offline, after one required fix: the
#   vendored github.com/modern-go/reflect2 v1.0.1 crashes under Go >= 1.18 on the first
#   custom-resource create, so its files are replaced by Debian's v1.0.2;
# - etcd is unpacked from bookworm's `etcd-server` .deb (nothing installed or started).
#
# Both are cached in $CACHE_DIR, outside the clone, so a kept machine reuses them
# (~1 s); a fresh one builds (~6.5 min on 2 cores, 1.4 GB of RAM at peak).
# Idempotent: rebuilds only when a binary is missing or the recipe (RECIPE_VERSION)
# changes. See ../shared/notes/real-apiserver.md for how this recipe was verified.
set -euo pipefail
source "$(dirname "$0")/lib/kubernetes-source.sh"

# Bump when the recipe below changes: the cached binaries are then rebuilt.
RECIPE_VERSION=1
CACHE_DIR=${GPTOMNI_KUBE_CACHE:-/var/cache/gptomni/kube-apiserver-$KUBE_VERSION}
STAMP="$CACHE_DIR/recipe"
BUILD_PACKAGES=(golang-go rsync make dpkg-dev openssl)

if [ -x "$CACHE_DIR/bin/kube-apiserver" ] && [ -x "$CACHE_DIR/bin/etcd" ] \
    && [ "$(cat "$STAMP" 2>/dev/null)" = "$RECIPE_VERSION" ] && command -v openssl >/dev/null; then
    exit 0
fi

if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null; then
    echo "10-kube-apiserver: needs root on Debian (apt-get)" >&2
    exit 1
fi

# Other provision steps may hold the apt locks: wait for them rather than fail.
apt_options=(-o DPkg::Lock::Timeout=300 -o Acquire::Retries=3)
missing=()
for package in "${BUILD_PACKAGES[@]}"; do
    dpkg-query -W -f '${Status}' "$package" 2>/dev/null | grep -q "install ok installed" || missing+=("$package")
done

ensure_deb_src
apt_update
if [ ${#missing[@]} -gt 0 ]; then
    DEBIAN_FRONTEND=noninteractive apt-get "${apt_options[@]}" install -y -qq --no-install-recommends \
        "${missing[@]}" >/dev/null
fi

enter_build_dir

started=$SECONDS
unpack_kubernetes_source
apt-get "${apt_options[@]}" download -qq etcd-server >/dev/null
dpkg-deb -x etcd-server_*.deb unpacked
echo "10-kube-apiserver: sources ready ($((SECONDS - started)) s)" >&2
started=$SECONDS
make_kubernetes cmd/kube-apiserver
echo "10-kube-apiserver: kube-apiserver built ($((SECONDS - started)) s)" >&2

mkdir -p "$CACHE_DIR/bin"
install -m 755 src/_output/local/bin/linux/*/kube-apiserver "$CACHE_DIR/bin/kube-apiserver.part"
install -m 755 unpacked/usr/bin/etcd "$CACHE_DIR/bin/etcd.part"
mv "$CACHE_DIR/bin/kube-apiserver.part" "$CACHE_DIR/bin/kube-apiserver"
mv "$CACHE_DIR/bin/etcd.part" "$CACHE_DIR/bin/etcd"
dpkg-deb -f etcd-server_*.deb Version >"$CACHE_DIR/etcd.version"
echo "$RECIPE_VERSION" >"$STAMP"
"$CACHE_DIR/bin/kube-apiserver" --version >&2
