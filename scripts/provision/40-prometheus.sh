#!/usr/bin/env bash
# The real-Prometheus tier (tests/test_prometheus_tier.py, tests/test_alert_rules.py):
# Debian's `prometheus` package (2.42 on bookworm) for its two binaries, the server and
# promtool. The tests start their own server on a free loopback port with their own
# config and data directory in a temporary folder; the package's system service is
# never wanted: it is kept from starting during the install and stopped and disabled if
# it runs anyway (it would listen on :9090, the relay's default metrics port).
# Idempotent; ~0 s when installed.
set -euo pipefail

stop_system_service() {
    if [ -d /run/systemd/system ]; then
        systemctl disable --now prometheus.service >/dev/null 2>&1 || true
    elif [ -x /etc/init.d/prometheus ]; then
        /etc/init.d/prometheus stop >/dev/null 2>&1 || true
        update-rc.d prometheus disable >/dev/null 2>&1 || true
    fi
}

if command -v prometheus >/dev/null && command -v promtool >/dev/null; then
    stop_system_service
    exit 0
fi

if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null; then
    echo "40-prometheus: needs root on Debian (apt-get)" >&2
    exit 1
fi

# invoke-rc.d asks policy-rc.d whether a package may start its service: 101 says no.
# Respect a policy that is already there (container images ship one).
policy=/usr/sbin/policy-rc.d
if [ ! -e "$policy" ]; then
    printf '#!/bin/sh\nexit 101\n' >"$policy"
    chmod 755 "$policy"
    trap 'rm -f "$policy"' EXIT
fi

# Other provision steps may hold the apt locks: wait for them rather than fail.
apt_options=(-o DPkg::Lock::Timeout=300 -o Acquire::Retries=3)
apt-get "${apt_options[@]}" update -qq
# No recommends: they would bring prometheus-node-exporter, another system service.
DEBIAN_FRONTEND=noninteractive apt-get "${apt_options[@]}" install -y -qq --no-install-recommends \
    prometheus >/dev/null
stop_system_service
prometheus --version 2>&1 | head -n1 >&2
