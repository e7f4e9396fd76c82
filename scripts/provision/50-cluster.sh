#!/usr/bin/env bash
# The cluster tier (tests/test_cluster*.py): a real single-node Kubernetes v1.20.2 from
# Debian bookworm alone, next to the kube-apiserver and etcd of 10-kube-apiserver.sh:
#
# - kubelet, kube-proxy, kube-controller-manager, kube-scheduler and kubectl compiled from
#   bookworm's source package `kubernetes` (the same tree, Go and reflect2 fix as
#   10-kube-apiserver.sh: lib/kubernetes-source.sh), offline, in one `make`;
# - pause (the sandbox's init) compiled statically from build/pause/linux/pause.c of that tree;
# - the node's runtime from Debian's packages: containerd 1.6 (CRI built in), runc, the CNI
#   plugins (bridge, host-local, loopback), iptables, conntrack, and dnsmasq-base (the
#   cluster DNS: CoreDNS is not packaged). Nothing is started here: scripts/cluster/start.sh
#   starts a fresh cluster (the tests do, once per session) and stop.sh removes it.
#
# Binaries are cached in $CACHE_DIR, outside the clone (~1 s when cached; ~15 min from
# scratch on 2 cores, 30-40 min on a busy machine, 1.6 GB of RAM at peak). Idempotent:
# rebuilds only when a binary is missing or RECIPE_VERSION changes.
# See ../shared/notes/real-cluster.md for how this recipe was verified.
set -euo pipefail
source "$(dirname "$0")/lib/kubernetes-source.sh"

# Bump when the recipe below changes: the cached binaries are then rebuilt.
RECIPE_VERSION=1
CACHE_DIR=${GPTOMNI_CLUSTER_CACHE:-/var/cache/gptomni/cluster-$KUBE_VERSION}
STAMP="$CACHE_DIR/recipe"
BINARIES=(kubelet kube-proxy kube-controller-manager kube-scheduler kubectl)
BUILD_PACKAGES=(golang-go rsync make dpkg-dev openssl gcc libc6-dev)
NODE_PACKAGES=(containerd runc containernetworking-plugins iptables conntrack dnsmasq-base)

if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null; then
    echo "50-cluster: needs root on Debian (apt-get)" >&2
    exit 1
fi

# Other provision steps may hold the apt locks: wait for them rather than fail.
apt_options=(-o DPkg::Lock::Timeout=600 -o Acquire::Retries=3)
install_packages() {
    local missing=() package
    for package in "$@"; do
        dpkg-query -W -f '${Status}' "$package" 2>/dev/null | grep -q "install ok installed" || missing+=("$package")
    done
    if [ ${#missing[@]} -gt 0 ]; then
        apt_update
        DEBIAN_FRONTEND=noninteractive apt-get "${apt_options[@]}" install -y -qq --no-install-recommends \
            "${missing[@]}" >/dev/null
    fi
}

install_packages "${NODE_PACKAGES[@]}"

cached=yes
for binary in "${BINARIES[@]}" pause; do
    [ -x "$CACHE_DIR/bin/$binary" ] || cached=no
done
if [ "$cached" = yes ] && [ "$(cat "$STAMP" 2>/dev/null)" = "$RECIPE_VERSION" ]; then
    exit 0
fi

install_packages "${BUILD_PACKAGES[@]}"
ensure_deb_src
enter_build_dir

started=$SECONDS
unpack_kubernetes_source
echo "50-cluster: sources ready ($((SECONDS - started)) s)" >&2
started=$SECONDS
make_kubernetes "${BINARIES[@]/#/cmd/}"
echo "50-cluster: ${BINARIES[*]} built ($((SECONDS - started)) s)" >&2

# The sandbox image's only binary, compiled as build/pause/Makefile does.
gcc -Os -Wall -Werror -static -DVERSION=v3.4-gptomni -o pause src/build/pause/linux/pause.c
strip pause

mkdir -p "$CACHE_DIR/bin"
for binary in "${BINARIES[@]}"; do
    install -m 755 "src/_output/local/bin/linux/amd64/$binary" "$CACHE_DIR/bin/$binary.part"
done
install -m 755 pause "$CACHE_DIR/bin/pause.part"
for binary in "${BINARIES[@]}" pause; do
    mv "$CACHE_DIR/bin/$binary.part" "$CACHE_DIR/bin/$binary"
done
echo "$RECIPE_VERSION" >"$STAMP"
"$CACHE_DIR/bin/kubelet" --version >&2
