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

KUBE_VERSION=v1.20.2
SOURCE_PACKAGE=kubernetes/bookworm
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

# apt-get source needs a deb-src entry for bookworm main, on the machine's own mirror.
sources=/etc/apt/sources.list.d/gptomni-deb-src.sources
if [ ! -e "$sources" ]; then
    mirror="$(sed -n 's/^URIs: *\([^ ]*\).*/\1/p' /etc/apt/sources.list.d/debian.sources 2>/dev/null | head -n1)"
    cat >"$sources" <<EOF
# Added by gptomni scripts/provision/10-kube-apiserver.sh (apt-get source kubernetes).
Types: deb-src
URIs: ${mirror:-http://deb.debian.org/debian}
Suites: bookworm
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
EOF
fi
apt-get "${apt_options[@]}" update -qq
if [ ${#missing[@]} -gt 0 ]; then
    DEBIAN_FRONTEND=noninteractive apt-get "${apt_options[@]}" install -y -qq --no-install-recommends \
        "${missing[@]}" >/dev/null
fi

mkdir -p "$CACHE_DIR"
work="$(mktemp -d "$CACHE_DIR/build.XXXXXX")"
trap 'rm -rf --one-file-system "$work"' EXIT
# apt drops privileges to _apt for downloads: let it write here.
chmod 755 "$work" && chown _apt "$work" 2>/dev/null || true
cd "$work"

started=$SECONDS
apt-get "${apt_options[@]}" source -qq --download-only "$SOURCE_PACKAGE" >/dev/null
apt-get "${apt_options[@]}" download -qq etcd-server golang-github-modern-go-reflect2-dev >/dev/null
dpkg-source --no-check -x kubernetes_*.dsc src >/dev/null
for deb in etcd-server_*.deb golang-github-modern-go-reflect2-dev_*.deb; do dpkg-deb -x "$deb" unpacked; done
echo "10-kube-apiserver: sources ready ($((SECONDS - started)) s)" >&2

# The required fix: reflect2 v1.0.2 over the vendored v1.0.1.
# The two versions split their files differently: replace the whole package.
reflect2=unpacked/usr/share/gocode/src/github.com/modern-go/reflect2
rm -f src/vendor/github.com/modern-go/reflect2/*.go src/vendor/github.com/modern-go/reflect2/*.s
cp "$reflect2"/*.go "$reflect2"/*.s src/vendor/github.com/modern-go/reflect2/
rm -f src/vendor/github.com/modern-go/reflect2/*_test.go

# Offline build: the tarball has no .git, so the version comes from a file.
cat >version.env <<EOF
KUBE_GIT_VERSION='$KUBE_VERSION'
KUBE_GIT_MAJOR='1'
KUBE_GIT_MINOR='20'
KUBE_GIT_COMMIT='0000000000000000000000000000000000000000'
KUBE_GIT_TREE_STATE='clean'
EOF
started=$SECONDS
(
    cd src
    export GOPROXY=off GOFLAGS= GOCACHE="$work/gocache" GOPATH="$work/gopath"
    export KUBE_GIT_VERSION_FILE="$work/version.env"
    make WHAT=cmd/kube-apiserver GOLDFLAGS='-s -w' >"$work/build.log" 2>&1
) || { tail -n 30 "$work/build.log" >&2; exit 1; }
echo "10-kube-apiserver: kube-apiserver built ($((SECONDS - started)) s)" >&2

mkdir -p "$CACHE_DIR/bin"
install -m 755 src/_output/local/bin/linux/*/kube-apiserver "$CACHE_DIR/bin/kube-apiserver.part"
install -m 755 unpacked/usr/bin/etcd "$CACHE_DIR/bin/etcd.part"
mv "$CACHE_DIR/bin/kube-apiserver.part" "$CACHE_DIR/bin/kube-apiserver"
mv "$CACHE_DIR/bin/etcd.part" "$CACHE_DIR/bin/etcd"
dpkg-deb -f etcd-server_*.deb Version >"$CACHE_DIR/etcd.version"
echo "$RECIPE_VERSION" >"$STAMP"
"$CACHE_DIR/bin/kube-apiserver" --version >&2
