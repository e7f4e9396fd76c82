#!/usr/bin/env bash
# The shared-pool tier (tests/test_shared_pool.py): Debian's redis-server binary. The tests
# start their own server on a free loopback port (no persistence) and stop it by PID; the
# system service the package installs is stopped and disabled here, so nothing listens
# on 6379 because of this step. Idempotent; instant when already installed.
set -euo pipefail

if command -v redis-server >/dev/null; then
    exit 0
fi
if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null; then
    echo "20-redis: needs root on Debian (apt-get)" >&2
    exit 1
fi

# Keep the package's service from starting at install time (no systemd in a container
# anyway, but a real machine would start it): policy-rc.d says "not now" to invoke-rc.d.
policy=/usr/sbin/policy-rc.d
created_policy=0
if [ ! -e "$policy" ]; then
    printf '#!/bin/sh\nexit 101\n' >"$policy"
    chmod 755 "$policy"
    created_policy=1
fi
trap '[ "$created_policy" = 1 ] && rm -f "$policy"' EXIT

# Other provision steps may hold the apt locks: wait for them rather than fail.
apt_options=(-o DPkg::Lock::Timeout=300 -o Acquire::Retries=3)
if ! apt-cache show redis-server >/dev/null 2>&1; then
    apt-get "${apt_options[@]}" update -qq
fi
DEBIAN_FRONTEND=noninteractive apt-get "${apt_options[@]}" install -y -qq --no-install-recommends \
    redis-server >/dev/null || {
    # A stale package list: refresh once and try again.
    apt-get "${apt_options[@]}" update -qq
    DEBIAN_FRONTEND=noninteractive apt-get "${apt_options[@]}" install -y -qq --no-install-recommends redis-server >/dev/null
}

# Where systemd runs, leave the system service neither running nor enabled.
if command -v systemctl >/dev/null && [ -d /run/systemd/system ]; then
    systemctl disable --now redis-server >/dev/null 2>&1 || true
fi
command -v redis-server >/dev/null
echo "20-redis: $(redis-server --version | cut -d' ' -f1-3)" >&2
