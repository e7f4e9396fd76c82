#!/usr/bin/env bash
# A fresh single-node Kubernetes v1.20.2 cluster on this machine, for the cluster tier
# (tests/test_cluster*.py) and for trying the chart by hand. Binaries from
# scripts/provision/10-kube-apiserver.sh and 50-cluster.sh; scripts/cluster/stop.sh undoes
# everything this does. Needs root. Usage:
#
#   sudo bash scripts/cluster/start.sh && source /run/gptomni-cluster/env.sh && kubectl get nodes
#
# Addresses (nothing is routed off the machine):
#   bridge cni0 10.244.0.1/24, created before anything else: the node IP, the API server's
#   address (pods reach it as the `kubernetes` Service), the pods' gateway and the cluster DNS.
#   Pods 10.244.0.0/24, Services 10.96.0.0/24 (routed to cni0, so a Service IP without
#   kube-proxy rules yet never leaves through the default route), etcd on 127.0.0.1.
# Before any pod can start: the cluster DNS (dnsmasq with no upstream: Service names resolve,
# every other name is refused) and a FORWARD rule dropping whatever a pod sends beyond cni0.
#
# Env: GPTOMNI_CLUSTER_RUN (state; default /run/gptomni-cluster), GPTOMNI_CLUSTER_SYNC_FREQUENCY
# (the kubelet's syncFrequency, default 10s: it bounds how soon a changed Secret reaches a
# mounted volume; upstream's 1m makes that 1-1.5 min), GPTOMNI_CLUSTER_CACHE, GPTOMNI_KUBE_CACHE.
set -euo pipefail
HERE="$(cd "$(dirname "$0")" && pwd)"

BIN=${GPTOMNI_CLUSTER_CACHE:-/var/cache/gptomni/cluster-v1.20.2}/bin
APISERVER_BIN=${GPTOMNI_KUBE_CACHE:-/var/cache/gptomni/kube-apiserver-v1.20.2}/bin
RUN=${GPTOMNI_CLUSTER_RUN:-/run/gptomni-cluster}
SYNC_FREQUENCY=${GPTOMNI_CLUSTER_SYNC_FREQUENCY:-10s}
NODE=node1
NODE_IP=10.244.0.1
POD_SUBNET=10.244.0.0/24
SERVICE_SUBNET=10.96.0.0/24
API_PORT=6443
PAUSE_IMAGE=localhost/pause:3.4
CONTAINERD_SOCKET=/run/containerd/containerd.sock
export PATH="$BIN:$APISERVER_BIN:$PATH"

started=$SECONDS
log() { echo "cluster start [$((SECONDS - started)) s] $*" >&2; }
die() { echo "cluster start: $*" >&2; exit 1; }

[ "$(id -u)" = 0 ] || die "needs root"
for binary in "$BIN"/{kubelet,kube-proxy,kube-controller-manager,kube-scheduler,kubectl,pause} \
              "$APISERVER_BIN"/{kube-apiserver,etcd}; do
    [ -x "$binary" ] || die "$binary missing: run bash scripts/provision.sh"
done
for tool in containerd ctr runc dnsmasq iptables conntrack openssl; do
    command -v "$tool" >/dev/null || die "$tool missing: run bash scripts/provision/50-cluster.sh"
done
if [ -d "$RUN/pids" ]; then
    for pidfile in "$RUN"/pids/*.pid; do
        [ -e "$pidfile" ] && kill -0 "$(cat "$pidfile")" 2>/dev/null && die "already running ($pidfile): stop.sh first"
    done
fi
ip link show cni0 >/dev/null 2>&1 && die "a bridge cni0 exists already (another cluster?): stop.sh first"

rm -rf "$RUN"
mkdir -p "$RUN"/{pids,logs,pki,cni/net.d,cni/ipam,dns,containerd/certs.d}
PKI=$RUN/pki

# The sysctls the kubelet, kube-proxy and the bridge plugin change: stop.sh puts them back.
for key in vm/overcommit_memory vm/panic_on_oom kernel/panic kernel/panic_on_oops kernel/keys/root_maxkeys \
           kernel/keys/root_maxbytes net/ipv4/ip_forward net/ipv4/conf/all/route_localnet; do
    echo "$key=$(cat "/proc/sys/$key")"
done >"$RUN/sysctl.saved"
modprobe br_netfilter 2>/dev/null || true
if [ -e /proc/sys/net/bridge/bridge-nf-call-iptables ]; then
    echo "net/bridge/bridge-nf-call-iptables=$(cat /proc/sys/net/bridge/bridge-nf-call-iptables)" >>"$RUN/sysctl.saved"
    # Service traffic between two pods on the one bridge must pass kube-proxy's rules.
    echo 1 >/proc/sys/net/bridge/bridge-nf-call-iptables
fi

# ---- the node's address, and the egress rule before any pod exists
ip link add cni0 type bridge
ip addr add "$NODE_IP/24" dev cni0
ip link set cni0 up
ip route replace "$SERVICE_SUBNET" dev cni0 src "$NODE_IP"
iptables -N GPTOMNI-CLUSTER-EGRESS 2>/dev/null || iptables -F GPTOMNI-CLUSTER-EGRESS
iptables -A GPTOMNI-CLUSTER-EGRESS -i cni0 ! -o cni0 -j DROP
iptables -I FORWARD 1 -j GPTOMNI-CLUSTER-EGRESS

# ---- a throw-away CA, serving certificates, static tokens, kubeconfigs
(
    cd "$PKI"
    quiet() { openssl "$@" 2>/dev/null; }
    quiet req -x509 -newkey rsa:2048 -nodes -keyout ca.key -out ca.crt -days 2 -subj "/CN=gptomni-test-cluster-ca"
    issue() {  # name subject extensions
        quiet req -newkey rsa:2048 -nodes -keyout "$1.key" -out "$1.csr" -subj "$2"
        printf '%b' "$3" >"$1.ext"
        quiet x509 -req -in "$1.csr" -CA ca.crt -CAkey ca.key -CAcreateserial -days 2 -extfile "$1.ext" -out "$1.crt"
        rm -f "$1.csr" "$1.ext"
    }
    issue apiserver "/CN=kube-apiserver" "subjectAltName=IP:$NODE_IP,IP:10.96.0.1,IP:127.0.0.1,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local\nextendedKeyUsage=serverAuth\n"
    issue apiserver-kubelet-client "/O=system:masters/CN=kube-apiserver-kubelet-client" "extendedKeyUsage=clientAuth\n"
    issue kubelet "/CN=$NODE" "subjectAltName=IP:$NODE_IP,DNS:$NODE\nextendedKeyUsage=serverAuth\n"
    quiet genrsa -out sa.key 2048
    quiet rsa -in sa.key -pubout -out sa.pub
)
declare -A token
for who in admin controller-manager scheduler proxy kubelet; do token[$who]=$(openssl rand -hex 16); done
cat >"$PKI/tokens.csv" <<EOF
${token[admin]},cluster-admin,uid-admin,"system:masters"
${token[controller-manager]},system:kube-controller-manager,uid-controller-manager
${token[scheduler]},system:kube-scheduler,uid-scheduler
${token[proxy]},system:kube-proxy,uid-proxy
${token[kubelet]},system:node:$NODE,uid-node,"system:nodes"
EOF
for who in "${!token[@]}"; do
    cat >"$RUN/$who.kubeconfig" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: gptomni-test
  cluster: {server: "https://$NODE_IP:$API_PORT", certificate-authority: "$PKI/ca.crt"}
users:
- name: $who
  user: {token: "${token[$who]}"}
contexts:
- name: gptomni-test
  context: {cluster: gptomni-test, user: $who, namespace: default}
current-context: gptomni-test
EOF
    chmod 600 "$RUN/$who.kubeconfig"
done

launch() {  # name command...: in the background, logged, its PID kept for stop.sh
    local name=$1; shift
    "$@" >"$RUN/logs/$name.log" 2>&1 &
    echo $! >"$RUN/pids/$name.pid"
}
check_alive() {
    kill -0 "$(cat "$RUN/pids/$1.pid")" 2>/dev/null || { tail -n 30 "$RUN/logs/$1.log" >&2; die "$1 exited"; }
}
wait_until() {  # name seconds command...
    local name=$1 seconds=$2; shift 2
    for _ in $(seq $((seconds * 10))); do
        "$@" >/dev/null 2>&1 && return 0
        check_alive "$name"
        sleep 0.1
    done
    tail -n 30 "$RUN/logs/$name.log" >&2
    die "$name not ready within $seconds s"
}

# ---- containerd: CRI, cgroupfs, our own CNI config directory, every registry a closed port
for registry in docker.io registry.k8s.io k8s.gcr.io quay.io ghcr.io gcr.io; do
    mkdir -p "$RUN/containerd/certs.d/$registry"
    printf 'server = "http://127.0.0.1:1"\n[host."http://127.0.0.1:1"]\n  capabilities = ["pull", "resolve"]\n' \
        >"$RUN/containerd/certs.d/$registry/hosts.toml"
done
cat >"$RUN/containerd/config.toml" <<EOF
version = 2
root = "/var/lib/containerd"
state = "/run/containerd"
[grpc]
  address = "$CONTAINERD_SOCKET"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "$PAUSE_IMAGE"
  # root here lacks CAP_SYS_RESOURCE: runc cannot give the sandbox its oom_score_adj of -998
  # ("can't get final child's PID from pipe: EOF"); this clamps it to containerd's own.
  restrict_oom_score_adj = true
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "$RUN/cni/net.d"
  [plugins."io.containerd.grpc.v1.cri".registry]
    config_path = "$RUN/containerd/certs.d"
EOF
cat >"$RUN/cni/net.d/10-bridge.conflist" <<EOF
{"cniVersion": "0.4.0", "name": "gptomni-test-pods", "plugins": [
  {"type": "bridge", "bridge": "cni0", "isGateway": true, "ipMasq": false, "hairpinMode": true,
   "ipam": {"type": "host-local", "ranges": [[{"subnet": "$POD_SUBNET", "gateway": "$NODE_IP"}]],
            "routes": [{"dst": "0.0.0.0/0"}], "dataDir": "$RUN/cni/ipam"}}]}
EOF
launch containerd containerd --config "$RUN/containerd/config.toml" --log-level warn
wait_until containerd 30 ctr --address "$CONTAINERD_SOCKET" version
# The sandbox image, made from the pause binary (no registry); kept in /var/lib/containerd.
if ! ctr -n k8s.io images ls -q | grep -qx "$PAUSE_IMAGE"; then
    python3 "$HERE/oci_archive.py" --name "$PAUSE_IMAGE" --file "/pause=$BIN/pause" --entrypoint /pause \
        "$RUN/pause.tar"
    ctr -n k8s.io images import "$RUN/pause.tar" >/dev/null
fi
log "containerd up"

# ---- etcd, kube-apiserver
read -r etcd_port etcd_peer_port < <(python3 -c 'import socket
sockets = [socket.socket() for _ in range(2)]
for s in sockets: s.bind(("127.0.0.1", 0))
print(*(s.getsockname()[1] for s in sockets))')
launch etcd etcd --name node1 --data-dir "$RUN/etcd" \
    --listen-client-urls "http://127.0.0.1:$etcd_port" --advertise-client-urls "http://127.0.0.1:$etcd_port" \
    --listen-peer-urls "http://127.0.0.1:$etcd_peer_port" --initial-advertise-peer-urls "http://127.0.0.1:$etcd_peer_port" \
    --initial-cluster "node1=http://127.0.0.1:$etcd_peer_port" --listen-metrics-urls= --log-level warn --logger zap
launch kube-apiserver kube-apiserver --etcd-servers="http://127.0.0.1:$etcd_port" \
    --bind-address="$NODE_IP" --advertise-address="$NODE_IP" --secure-port="$API_PORT" --insecure-port=0 \
    --tls-cert-file="$PKI/apiserver.crt" --tls-private-key-file="$PKI/apiserver.key" \
    --client-ca-file="$PKI/ca.crt" --token-auth-file="$PKI/tokens.csv" \
    --authorization-mode=Node,RBAC --enable-admission-plugins=NodeRestriction \
    --service-account-issuer=https://kubernetes.default.svc.cluster.local \
    --service-account-key-file="$PKI/sa.pub" --service-account-signing-key-file="$PKI/sa.key" \
    --service-cluster-ip-range="$SERVICE_SUBNET" \
    --kubelet-client-certificate="$PKI/apiserver-kubelet-client.crt" \
    --kubelet-client-key="$PKI/apiserver-kubelet-client.key" --kubelet-preferred-address-types=InternalIP \
    --cert-dir="$RUN/apiserver-certs" --v=0
wait_until kube-apiserver 120 python3 -c 'import ssl, sys, urllib.request
request = urllib.request.Request(sys.argv[1], headers={"Authorization": "Bearer " + sys.argv[2]})
urllib.request.urlopen(request, context=ssl.create_default_context(cafile=sys.argv[3]), timeout=2)' \
    "https://$NODE_IP:$API_PORT/readyz" "${token[admin]}" "$PKI/ca.crt"
log "kube-apiserver ready"

launch kube-controller-manager kube-controller-manager --kubeconfig="$RUN/controller-manager.kubeconfig" \
    --authentication-kubeconfig="$RUN/controller-manager.kubeconfig" \
    --authorization-kubeconfig="$RUN/controller-manager.kubeconfig" \
    --bind-address=127.0.0.1 --secure-port=10257 --port=0 --leader-elect=false \
    --use-service-account-credentials=true --service-account-private-key-file="$PKI/sa.key" \
    --root-ca-file="$PKI/ca.crt" --service-cluster-ip-range="$SERVICE_SUBNET" \
    --allocate-node-cidrs=true --cluster-cidr=10.244.0.0/16 --node-cidr-mask-size=24 \
    --configure-cloud-routes=false --v=0
launch kube-scheduler kube-scheduler --kubeconfig="$RUN/scheduler.kubeconfig" \
    --authentication-kubeconfig="$RUN/scheduler.kubeconfig" --authorization-kubeconfig="$RUN/scheduler.kubeconfig" \
    --bind-address=127.0.0.1 --secure-port=10259 --port=0 --leader-elect=false --v=0

# ---- cluster DNS, before the kubelet: Service names from the API, nothing else, no upstream
: >"$RUN/dns/services.hosts"
echo "nameserver $NODE_IP" >"$RUN/resolv.conf"
launch dnsmasq dnsmasq --keep-in-foreground --conf-file=/dev/null --no-resolv --no-hosts --no-poll \
    --listen-address="$NODE_IP" --bind-interfaces --port=53 --local=/cluster.local/ --domain-needed \
    --bogus-priv --addn-hosts="$RUN/dns/services.hosts" --log-facility=-
# dns-sync reloads dnsmasq with SIGHUP, which kills a dnsmasq that has not yet set its
# handlers (seen under load: "dnsmasq exited"): wait for its first answer to any query.
wait_until dnsmasq 20 python3 -c 'import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.settimeout(0.5)
s.sendto(b"gp\x01\x00\x00\x01" + bytes(6) + b"\x0dgptomni-probe\x00\x00\x01\x00\x01", (sys.argv[1], 53))
s.recv(512)' "$NODE_IP"
launch dns-sync python3 "$HERE/dns_sync.py" --kubeconfig "$RUN/admin.kubeconfig" \
    --hosts "$RUN/dns/services.hosts" --dnsmasq-pid "$(cat "$RUN/pids/dnsmasq.pid")"

# ---- kubelet, kube-proxy
cat >"$RUN/kubelet.yaml" <<EOF
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
address: $NODE_IP
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
tlsCertFile: $PKI/kubelet.crt
tlsPrivateKeyFile: $PKI/kubelet.key
authentication: {anonymous: {enabled: false}, webhook: {enabled: true}, x509: {clientCAFile: $PKI/ca.crt}}
authorization: {mode: Webhook}
cgroupDriver: cgroupfs
failSwapOn: false
clusterDomain: cluster.local
clusterDNS: [$NODE_IP]
resolvConf: $RUN/resolv.conf
syncFrequency: $SYNC_FREQUENCY
serializeImagePulls: false
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
evictionHard: {memory.available: 100Mi, nodefs.available: 1%, imagefs.available: 1%, nodefs.inodesFree: 1%}
maxPods: 50
nodeStatusUpdateFrequency: 2s
EOF
launch kubelet kubelet --config="$RUN/kubelet.yaml" --kubeconfig="$RUN/kubelet.kubeconfig" \
    --container-runtime=remote --container-runtime-endpoint="unix://$CONTAINERD_SOCKET" \
    --hostname-override="$NODE" --node-ip="$NODE_IP" --pod-infra-container-image="$PAUSE_IMAGE" --v=0
cat >"$RUN/kube-proxy.yaml" <<EOF
apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
clientConnection: {kubeconfig: $RUN/proxy.kubeconfig}
mode: iptables
hostnameOverride: $NODE
bindAddress: $NODE_IP
clusterCIDR: 10.244.0.0/16
healthzBindAddress: 127.0.0.1:10256
metricsBindAddress: 127.0.0.1:10249
# Leave the machine's conntrack settings alone.
conntrack: {maxPerCore: 0, min: 0, tcpEstablishedTimeout: 0s, tcpCloseWaitTimeout: 0s}
EOF
launch kube-proxy kube-proxy --config="$RUN/kube-proxy.yaml" --v=0

cat >"$RUN/env.sh" <<EOF
export KUBECONFIG=$RUN/admin.kubeconfig
export PATH=$BIN:\$PATH
EOF
export KUBECONFIG=$RUN/admin.kubeconfig
node_ready() {
    [ "$(kubectl get node "$NODE" -o jsonpath='{.status.conditions[?(@.type=="Ready")].status}' 2>/dev/null)" = True ]
}
wait_until kubelet 120 node_ready
log "node Ready"
# A pod is admitted only once its namespace's default ServiceAccount exists.
wait_until kube-controller-manager 60 kubectl get serviceaccount default
for name in kube-proxy dnsmasq dns-sync kube-scheduler; do check_alive "$name"; done
log "cluster up: source $RUN/env.sh"
