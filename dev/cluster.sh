#!/usr/bin/env bash
# A single-node Kubernetes on this machine, assembled from what the package registries serve:
# etcd, containerd, runc, the CNI plugins and dnsmasq from Debian; Kubernetes itself built from
# the Go module proxy (dev/cluster_build.sh); the project's image from `make image`, loaded into
# containerd. Every process runs on the host, bound to loopback or to the address of the pods'
# bridge (10.244.0.1, where the API server listens, so that pods reach it too).
#
#   dev/cluster.sh up        install, build, start etcd, the control plane, containerd, kubelet and
#                            kube-proxy; load the images; wait until the node is Ready
#   dev/cluster.sh down      remove the pods, stop what `up` started (by pid), undo its network
#   dev/cluster.sh test      up, tests/test_cluster_system.py, down (whatever the tests say)
#   dev/cluster.sh kubectl ARGS...    kubectl with the cluster's admin credentials
#   dev/cluster.sh dns       (re)write the DNS names of the cluster's Services
#   dev/cluster.sh status
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# shellcheck source=dev/defaults.env
source "$ROOT/dev/defaults.env"
log() { printf '[cluster] %s\n' "$*" >&2; }
# shellcheck source=dev/apt.sh
source "$ROOT/dev/apt.sh"

STATE="${CLUSTER_DIR:-$INFRA_DIR/cluster}"
BIN="$STATE/bin" PKI="$STATE/pki" LOGS="$STATE/logs" PIDS="$STATE/pids"
NODE=video2mp3-node
# Ports away from the defaults, so nothing clashes with another cluster or tool here.
ETCD_PORT=23790 ETCD_PEER_PORT=23800 API_PORT=16443 KUBELET_PORT=20250
POD_CIDR=10.244.0.0/24 BRIDGE=v2m-cni0 BRIDGE_IP=10.244.0.1 SERVICE_CIDR=10.96.0.0/24
CONTAINERD_SOCK="$STATE/containerd/containerd.sock"
# super-admin.conf: group system:masters (admin.conf relies on a binding kubeadm init would make).
ADMIN="$STATE/kubeconfig/super-admin.conf"
PAUSE_IMAGE=localhost/video2mp3-pause:3.9
kubectl_() { "$BIN/kubectl" --kubeconfig "$ADMIN" "$@"; }
ctr_() { ctr --address "$CONTAINERD_SOCK" --namespace k8s.io "$@"; }
alive() { [[ -f "$PIDS/$1.pid" ]] && kill -0 "$(cat "$PIDS/$1.pid")" 2>/dev/null; }
start() { # name command... : a host process of the cluster, in the background, logged
  local name="$1"
  shift
  alive "$name" && return 0
  log "starting $name"
  setsid "$@" </dev/null >>"$LOGS/$name.log" 2>&1 &
  echo $! >"$PIDS/$name.pid"
}
wait_until() { # seconds what command...
  local seconds="$1" what="$2" i
  shift 2
  for ((i = 0; i < seconds * 2; i++)); do
    "$@" >/dev/null 2>&1 && return 0
    sleep 0.5
  done
  log "$what: not within $seconds s (logs: $LOGS)"
  return 1
}

install() {
  apt_install etcd-server containerd runc containernetworking-plugins iptables conntrack dnsmasq-base socat podman
  bash "$ROOT/dev/cluster_build.sh" "$BIN"
}

pki() {
  [[ -f "$ADMIN" ]] && return 0
  log "making the cluster's certificates and kubeconfigs (kubeadm init phase certs/kubeconfig)"
  "$BIN/kubeadm" init phase certs all --cert-dir "$PKI" --apiserver-advertise-address "$BRIDGE_IP" \
    --service-cidr "$SERVICE_CIDR" >/dev/null
  "$BIN/kubeadm" init phase kubeconfig all --kubeconfig-dir "$STATE/kubeconfig" --cert-dir "$PKI" \
    --apiserver-advertise-address "$BRIDGE_IP" --apiserver-bind-port "$API_PORT" --node-name "$NODE" >/dev/null
}

network() {
  # Pods on a bridge of their own; bridged traffic passes iptables (kube-proxy's Service rules).
  # Their routes: the bridge and the Services, no default route (nothing of theirs leaves the machine).
  echo 1 >/proc/sys/net/bridge/bridge-nf-call-iptables
  echo 1 >/proc/sys/net/ipv4/ip_forward
  mkdir -p "$STATE/cni"
  cat >"$STATE/cni/10-video2mp3.conflist" <<EOF
{"cniVersion": "0.4.0", "name": "video2mp3", "plugins": [
  {"type": "bridge", "bridge": "$BRIDGE", "isGateway": true, "ipMasq": false, "hairpinMode": true,
   "ipam": {"type": "host-local", "ranges": [[{"subnet": "$POD_CIDR", "gateway": "$BRIDGE_IP"}]],
            "routes": [{"dst": "$SERVICE_CIDR"}], "dataDir": "$STATE/cni/ipam"}},
  {"type": "portmap", "capabilities": {"portMappings": true}}]}
EOF
  # The bridge exists before the first pod, so the DNS server can listen on it.
  if ! ip link show "$BRIDGE" >/dev/null 2>&1; then
    ip link add "$BRIDGE" type bridge
    ip addr add "$BRIDGE_IP/24" dev "$BRIDGE"
    ip link set "$BRIDGE" up
  fi
}

containerd_up() {
  mkdir -p "$STATE/containerd"
  cat >"$STATE/containerd/config.toml" <<EOF
version = 2
root = "$STATE/containerd/root"
state = "$STATE/containerd/state"
[grpc]
  address = "$CONTAINERD_SOCK"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "$PAUSE_IMAGE"
  # No CAP_SYS_RESOURCE here: runc may not lower a sandbox's oom_score_adj below containerd's own
  # (without this, every sandbox fails: "can't get final child's PID from pipe").
  restrict_oom_score_adj = true
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "$STATE/cni"
  [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
    runtime_type = "io.containerd.runc.v2"
EOF
  start containerd containerd --config "$STATE/containerd/config.toml"
  wait_until 30 containerd ctr_ version
}

images() {
  # The sandbox image from Kubernetes' pause.c, and the project's image, from Podman's store.
  local work
  work="$(mktemp -d)"
  if ! podman image exists "$PAUSE_IMAGE"; then
    mkdir -p "$work/pause"
    cp "$BIN/pause" "$work/pause/pause"
    tar -C "$work/pause" -cf "$work/pause.tar" pause
    podman import --quiet --change 'ENTRYPOINT ["/pause"]' "$work/pause.tar" "$PAUSE_IMAGE" >/dev/null
  fi
  local image
  image="$("$PYTHON" "$ROOT/dev/image_containers.py" image)"
  for ref in "$PAUSE_IMAGE" "localhost/$image"; do
    log "loading $ref into containerd"
    podman save --format docker-archive "$ref" >"$work/image.tar"
    ctr_ images import --no-unpack=false "$work/image.tar" >/dev/null
  done
  # The manifests name `video2mp3:0.1.0`, which the kubelet asks containerd for as docker.io/library/...
  ctr_ images tag --force "localhost/$image" "docker.io/library/$image" >/dev/null
  rm -rf "$work"
}

control_plane_up() {
  mkdir -p "$STATE/etcd"
  start etcd etcd --name "$NODE" --data-dir "$STATE/etcd" \
    --listen-client-urls "http://127.0.0.1:$ETCD_PORT" --advertise-client-urls "http://127.0.0.1:$ETCD_PORT" \
    --listen-peer-urls "http://127.0.0.1:$ETCD_PEER_PORT" --initial-advertise-peer-urls "http://127.0.0.1:$ETCD_PEER_PORT" \
    --initial-cluster "$NODE=http://127.0.0.1:$ETCD_PEER_PORT" --listen-metrics-urls ""
  start kube-apiserver "$BIN/kube-apiserver" --etcd-servers "http://127.0.0.1:$ETCD_PORT" \
    --bind-address "$BRIDGE_IP" --advertise-address "$BRIDGE_IP" --secure-port "$API_PORT" \
    --service-cluster-ip-range "$SERVICE_CIDR" --allow-privileged=false \
    --client-ca-file "$PKI/ca.crt" --tls-cert-file "$PKI/apiserver.crt" --tls-private-key-file "$PKI/apiserver.key" \
    --kubelet-client-certificate "$PKI/apiserver-kubelet-client.crt" \
    --kubelet-client-key "$PKI/apiserver-kubelet-client.key" \
    --service-account-issuer https://kubernetes.default.svc.cluster.local \
    --service-account-key-file "$PKI/sa.pub" --service-account-signing-key-file "$PKI/sa.key" \
    --authorization-mode Node,RBAC --enable-admission-plugins NodeRestriction \
    --kubelet-preferred-address-types InternalIP
  wait_until 120 kube-apiserver kubectl_ get --raw /readyz
  # The API server's client at the kubelet (logs, exec, port-forward), as kubeadm init binds it.
  kubectl_ create clusterrolebinding kube-apiserver-kubelet-client --clusterrole system:kubelet-api-admin \
    --user kube-apiserver-kubelet-client --dry-run=client -o yaml | kubectl_ apply -f - >/dev/null
  start kube-controller-manager "$BIN/kube-controller-manager" \
    --kubeconfig "$STATE/kubeconfig/controller-manager.conf" --bind-address 127.0.0.1 --secure-port 20257 \
    --service-account-private-key-file "$PKI/sa.key" --root-ca-file "$PKI/ca.crt" \
    --cluster-signing-cert-file "$PKI/ca.crt" --cluster-signing-key-file "$PKI/ca.key" \
    --use-service-account-credentials --controllers '*,-nodeipam'
  start kube-scheduler "$BIN/kube-scheduler" --kubeconfig "$STATE/kubeconfig/scheduler.conf" \
    --bind-address 127.0.0.1 --secure-port 20259
}

node_up() {
  cat >"$STATE/kubelet.yaml" <<EOF
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
address: $BRIDGE_IP
port: $KUBELET_PORT
readOnlyPort: 0
healthzPort: 20248
authentication: {anonymous: {enabled: false}, webhook: {enabled: true}, x509: {clientCAFile: "$PKI/ca.crt"}}
authorization: {mode: Webhook}
cgroupDriver: cgroupfs
containerRuntimeEndpoint: unix://$CONTAINERD_SOCK
clusterDNS: ["$BRIDGE_IP"]
clusterDomain: cluster.local
failSwapOn: false
podCIDR: "$POD_CIDR"
serializeImagePulls: false
evictionHard: {"memory.available": "100Mi", "nodefs.available": "1%", "imagefs.available": "1%"}
EOF
  start kubelet "$BIN/kubelet" --config "$STATE/kubelet.yaml" --kubeconfig "$STATE/kubeconfig/kubelet.conf" \
    --hostname-override "$NODE" --node-ip "$BRIDGE_IP" --root-dir "$STATE/kubelet"
  start kube-proxy "$BIN/kube-proxy" --kubeconfig "$ADMIN" --hostname-override "$NODE" \
    --proxy-mode iptables --cluster-cidr "$POD_CIDR" --bind-address 127.0.0.1 \
    --healthz-bind-address 127.0.0.1:20256 --metrics-bind-address 127.0.0.1:20249
  dns
  wait_until 120 "node $NODE Ready" kubectl_ wait --for=condition=Ready "node/$NODE" --timeout=1s
}

# DNS for the pods: dnsmasq on the bridge answers the names of the cluster's Services
# (NAME.NAMESPACE.svc.cluster.local, from the API), nothing else; a stand-in for CoreDNS.
dns() {
  local hosts="$STATE/dns-hosts"
  kubectl_ get services --all-namespaces -o \
    jsonpath='{range .items[*]}{.spec.clusterIP} {.metadata.name}.{.metadata.namespace}.svc.cluster.local{"\n"}{end}' |
    grep -v '^None ' >"$hosts.new" || true
  mv "$hosts.new" "$hosts"
  if alive dnsmasq; then kill -HUP "$(cat "$PIDS/dnsmasq.pid")"; return 0; fi
  start dnsmasq dnsmasq --keep-in-foreground --no-resolv --no-hosts --addn-hosts "$hosts" \
    --listen-address "$BRIDGE_IP" --bind-interfaces --port 53 --local=/cluster.local/ --pid-file=
}

up() {
  install
  mkdir -p "$LOGS" "$PIDS"
  network
  pki
  containerd_up
  images
  control_plane_up
  node_up
  log "node $NODE is Ready; kubectl: bash dev/cluster.sh kubectl ..."
}

stop() { # name: stop a process `up` started, by its pid
  alive "$1" || { rm -f "$PIDS/$1.pid"; return 0; }
  local pid i
  pid="$(cat "$PIDS/$1.pid")"
  log "stopping $1 (pid $pid)"
  kill "$pid"
  for ((i = 0; i < 100; i++)); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
  kill -0 "$pid" 2>/dev/null && kill -KILL "$pid"
  rm -f "$PIDS/$1.pid"
}

down() {
  if alive kube-apiserver && alive kubelet; then
    log "removing the pods"
    kubectl_ delete namespace video2mp3 --ignore-not-found --wait=true --timeout=400s >/dev/null || true
  fi
  stop kube-proxy
  stop kubelet
  # Whatever the kubelet left: every task and container of containerd's k8s.io namespace.
  if alive containerd; then
    local id
    for id in $(ctr_ tasks list -q 2>/dev/null); do ctr_ tasks kill --signal SIGKILL "$id" >/dev/null 2>&1 || true; done
    sleep 1
    for id in $(ctr_ tasks list -q 2>/dev/null); do ctr_ tasks delete --force "$id" >/dev/null 2>&1 || true; done
    for id in $(ctr_ containers list -q 2>/dev/null); do ctr_ containers delete "$id" >/dev/null 2>&1 || true; done
  fi
  stop containerd
  stop dnsmasq
  stop kube-scheduler
  stop kube-controller-manager
  stop kube-apiserver
  stop etcd
  if [[ -x "$BIN/kube-proxy" ]]; then "$BIN/kube-proxy" --cleanup >/dev/null 2>&1 || true; fi
  ip link del "$BRIDGE" 2>/dev/null || true
  # Mounts the kubelet and containerd left under the state folder (pod volumes, sandbox shm).
  grep -o " $STATE/[^ ]*" /proc/mounts | sort -r | while read -r mount; do umount "$mount" 2>/dev/null || true; done
}

status() {
  local name
  for name in etcd kube-apiserver kube-controller-manager kube-scheduler containerd kubelet kube-proxy dnsmasq; do
    if alive "$name"; then echo "$name up (pid $(cat "$PIDS/$name.pid"))"; else echo "$name down"; fi
  done
}

test_() {
  bash "$ROOT/dev/image.sh" build
  trap down EXIT
  up
  VIDEO2MP3_CLUSTER=1 PYTHONPATH="$ROOT:$ROOT/gen" \
    "$PYTHON" -m pytest -q -p no:cacheprovider "$ROOT/tests/test_cluster_system.py"
}

case "${1:-}" in
  up) up ;;
  test) test_ ;;
  down) down ;;
  kubectl) shift; kubectl_ "$@" ;;
  dns) dns ;;
  status) status ;;
  *) sed -n '2,14p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//' >&2; exit 2 ;;
esac
