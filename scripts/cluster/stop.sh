#!/usr/bin/env bash
# Stops the cluster scripts/cluster/start.sh started and undoes what it did to the machine:
# pods (deleted through the API while the kubelet can still release their network), the
# processes (by the PIDs start.sh kept), leftover container shims of ours, iptables chains,
# mounts, network namespaces, the bridge, the sysctls, the pods' cgroups and state. Images
# imported into /var/lib/containerd stay for the next run. Safe to run twice. Needs root.
set -uo pipefail
BIN=${GPTOMNI_CLUSTER_CACHE:-/var/cache/gptomni/cluster-v1.20.2}/bin
RUN=${GPTOMNI_CLUSTER_RUN:-/run/gptomni-cluster}
CONTAINERD_SOCKET=/run/containerd/containerd.sock
export PATH="$BIN:$PATH" KUBECONFIG="$RUN/admin.kubeconfig"
log() { echo "cluster stop: $*" >&2; }
pid_of() { [ -e "$RUN/pids/$1.pid" ] && cat "$RUN/pids/$1.pid"; }
running() { local pid; pid=$(pid_of "$1") && kill -0 "$pid" 2>/dev/null; }

# ---- pods first, while the kubelet still runs: it stops them and calls CNI DEL
if running kube-apiserver && running kubelet; then
    kubectl delete namespaces --all --wait=false >/dev/null 2>&1  # default, kube-* are protected
    kubectl delete pods --all --all-namespaces --grace-period=1 --wait=false >/dev/null 2>&1
    for _ in $(seq 60); do
        [ -z "$(kubectl get pods --all-namespaces -o name 2>/dev/null)" ] && break
        kubectl delete pods --all --all-namespaces --grace-period=0 --force --wait=false >/dev/null 2>&1
        sleep 1
    done
    for _ in $(seq 30); do
        [ -z "$(ctr --address "$CONTAINERD_SOCKET" -n k8s.io tasks ls -q 2>/dev/null)" ] && break
        sleep 1
    done
fi

stop_process() {
    local pid
    pid=$(pid_of "$1") || return 0
    if kill -0 "$pid" 2>/dev/null; then
        kill -TERM "$pid"
        for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        kill -0 "$pid" 2>/dev/null && kill -KILL "$pid"
    fi
    rm -f "$RUN/pids/$1.pid"
}
for name in kube-proxy kubelet dns-sync dnsmasq kube-scheduler kube-controller-manager kube-apiserver etcd; do
    stop_process "$name"
done
if running containerd; then
    ctr_k8s() { ctr --address "$CONTAINERD_SOCKET" -n k8s.io "$@"; }
    for task in $(ctr_k8s tasks ls -q 2>/dev/null); do ctr_k8s tasks kill -s KILL "$task" >/dev/null 2>&1; done
    sleep 1
    for task in $(ctr_k8s tasks ls -q 2>/dev/null); do ctr_k8s tasks delete -f "$task" >/dev/null 2>&1; done
    for container in $(ctr_k8s containers ls -q 2>/dev/null); do ctr_k8s containers delete "$container" >/dev/null 2>&1; done
fi
stop_process containerd
# A shim left behind names one of our task directories and our socket in its arguments.
for bundle in /run/containerd/io.containerd.runtime.v2.task/k8s.io/*/; do
    [ -d "$bundle" ] || continue
    id=$(basename "$bundle")
    for cmdline in /proc/[0-9]*/cmdline; do
        args=$(tr '\0' ' ' <"$cmdline" 2>/dev/null) || continue
        if [[ $args == *containerd-shim-runc-v2*" -id $id "* && $args == *"-address $CONTAINERD_SOCKET"* ]]; then
            pid=${cmdline#/proc/}; pid=${pid%/cmdline}
            log "killing leftover shim $pid"
            kill -KILL "$pid"
        fi
    done
done

# ---- iptables: kube-proxy's chains, then the kubelet's, CNI's and our egress rule
if command -v iptables >/dev/null; then
    [ -x "$BIN/kube-proxy" ] && "$BIN/kube-proxy" --cleanup >/dev/null 2>&1
    ours='(KUBE|CNI|GPTOMNI-CLUSTER)-'
    for table in filter nat mangle; do
        iptables -t "$table" -S 2>/dev/null | grep -E -- "^-A .* -j $ours" | grep -vE "^-A $ours" \
            | sed 's/^-A /-D /' | while read -r rule; do eval iptables -t "$table" "$rule"; done
        chains=$(iptables -t "$table" -S 2>/dev/null | awk -v re="^$ours" '$1 == "-N" && $2 ~ re {print $2}')
        for chain in $chains; do iptables -t "$table" -F "$chain"; done
        for chain in $chains; do iptables -t "$table" -X "$chain"; done
    done
fi

# ---- mounts (deepest first), network namespaces, the bridge and any veth left on it
awk '{print $2}' /proc/mounts | grep -E '^(/var/lib/kubelet(/|$)|/run/containerd/|/var/lib/containerd/|/run/netns/cni-)' \
    | sort -r | while read -r mount; do umount -l "$mount" 2>/dev/null || log "could not unmount $mount"; done
rm -f /run/netns/cni-*
if ip link show cni0 >/dev/null 2>&1; then
    for link in /sys/class/net/cni0/brif/*; do [ -e "$link" ] && ip link del "$(basename "$link")"; done
    ip link del cni0
fi

# ---- sysctls, cgroups, state (the images in /var/lib/containerd are kept)
if [ -e "$RUN/sysctl.saved" ]; then
    while IFS== read -r key value; do
        echo "$value" >"/proc/sys/$key" 2>/dev/null || log "could not restore $key"
    done <"$RUN/sysctl.saved"
fi
for hierarchy in /sys/fs/cgroup/*/ /sys/fs/cgroup/; do
    [ -d "$hierarchy/kubepods" ] || continue
    find "$hierarchy/kubepods" -depth -type d -exec rmdir {} \; 2>/dev/null
    [ -d "$hierarchy/kubepods" ] && log "cgroup $hierarchy/kubepods still busy"
done
rm -rf --one-file-system /var/lib/kubelet /var/log/pods /var/log/containers "$RUN"
log "stopped"
