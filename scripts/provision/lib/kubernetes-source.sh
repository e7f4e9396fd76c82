# Sourced by scripts/provision/10-kube-apiserver.sh and 50-cluster.sh (not a step itself):
# bookworm's source package `kubernetes` (upstream v1.20.2 with vendor/), unpacked and made
# buildable offline with bookworm's Go. See ../shared/notes/real-apiserver.md.

KUBE_VERSION=v1.20.2
KUBE_SOURCE_PACKAGE=kubernetes/bookworm

# `apt-get update` does not wait for the lists lock another step holds: retry it.
apt_update() {
    for _ in $(seq 60); do
        apt-get "${apt_options[@]}" update -qq 2>/dev/null && return 0
        sleep 5
    done
    apt-get "${apt_options[@]}" update -qq
}

# apt-get source needs a deb-src entry for bookworm main, on the machine's own mirror.
ensure_deb_src() {
    local sources=/etc/apt/sources.list.d/gptomni-deb-src.sources mirror
    [ -e "$sources" ] && return 0
    mirror="$(sed -n 's/^URIs: *\([^ ]*\).*/\1/p' /etc/apt/sources.list.d/debian.sources 2>/dev/null | head -n1)"
    cat >"$sources" <<SOURCES
# Added by gptomni scripts/provision (apt-get source kubernetes).
Types: deb-src
URIs: ${mirror:-http://deb.debian.org/debian}
Suites: bookworm
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
SOURCES
    apt_update
}

# Into a scratch build directory under $CACHE_DIR (the results' filesystem, so installing
# them is a rename), removed when the step exits.
enter_build_dir() {
    mkdir -p "$CACHE_DIR"
    work="$(mktemp -d "$CACHE_DIR/build.XXXXXX")"
    trap 'rm -rf --one-file-system "$work"' EXIT
    # apt drops privileges to _apt for downloads: let it write here.
    chmod 755 "$work" && chown _apt "$work" 2>/dev/null || true
    cd "$work" || exit 1
}

# The source tree in ./src and ./version.env (the current directory must be writable by _apt).
unpack_kubernetes_source() {
    apt-get "${apt_options[@]}" source -qq --download-only "$KUBE_SOURCE_PACKAGE" >/dev/null
    apt-get "${apt_options[@]}" download -qq golang-github-modern-go-reflect2-dev >/dev/null
    dpkg-source --no-check -x kubernetes_*.dsc src >/dev/null
    dpkg-deb -x golang-github-modern-go-reflect2-dev_*.deb reflect2-deb
    # The required fix: the vendored github.com/modern-go/reflect2 v1.0.1 crashes under
    # Go >= 1.18 on the first custom-resource create; the two versions split their files
    # differently, so Debian's v1.0.2 replaces the whole package.
    local vendored=src/vendor/github.com/modern-go/reflect2
    local reflect2=reflect2-deb/usr/share/gocode/src/github.com/modern-go/reflect2
    rm -f "$vendored"/*.go "$vendored"/*.s
    cp "$reflect2"/*.go "$reflect2"/*.s "$vendored"/
    rm -f "$vendored"/*_test.go
    # Offline build: the tarball has no .git, so the version comes from a file.
    cat >version.env <<VERSION
KUBE_GIT_VERSION='$KUBE_VERSION'
KUBE_GIT_MAJOR='1'
KUBE_GIT_MINOR='20'
KUBE_GIT_COMMIT='0000000000000000000000000000000000000000'
KUBE_GIT_TREE_STATE='clean'
VERSION
}

# make WHAT="$*" in ./src, offline, with the Go caches under the current directory.
make_kubernetes() {
    local work
    work="$(pwd)"
    (
        cd src
        export GOPROXY=off GOFLAGS= GOTOOLCHAIN=local GOCACHE="$work/gocache" GOPATH="$work/gopath"
        export KUBE_GIT_VERSION_FILE="$work/version.env"
        nice -n "${GPTOMNI_BUILD_NICE:-10}" make WHAT="$*" GOLDFLAGS='-s -w' >"$work/build.log" 2>&1
    ) || { tail -n 30 "$work/build.log" >&2; return 1; }
}
