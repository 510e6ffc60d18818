#!/usr/bin/env bash
# Kubernetes for `make cluster-test`, built here from the Go module proxy (no release binaries,
# no container registry can be reached from this project's machines).
#
#   bash dev/cluster_build.sh BIN_DIR     kube-apiserver, kube-controller-manager, kube-scheduler,
#                                         kubelet, kube-proxy, kubectl, kubeadm and `pause`
#                                         into BIN_DIR (nothing to do when they are current)
#
# k8s.io/kubernetes cannot be `go install`ed: its go.mod replaces the k8s.io/* libraries with
# ./staging/src/k8s.io/*, folders that are modules of their own and so are not in its module zip.
# The build takes the module's source, points each replace at the published module of the same
# release (k8s.io/api v0.30.14 for v1.30.14 ...), drops the sample-* modules that only its tests
# use (k8s.io/sample-apiserver v0.30.14 is not served by the proxy), and builds with -mod=mod.
set -euo pipefail
BIN="${1:?usage: dev/cluster_build.sh BIN_DIR}"
K8S_VERSION="${K8S_VERSION:-v1.30.14}"
STAGING_VERSION="v0${K8S_VERSION#v1}"
COMMANDS=(kube-apiserver kube-controller-manager kube-scheduler kubelet kube-proxy kubectl kubeadm)
log() { printf '[cluster] %s\n' "$*" >&2; }

stamp="$BIN/.version"
if [[ "$(cat "$stamp" 2>/dev/null)" == "$K8S_VERSION" ]]; then exit 0; fi
command -v go >/dev/null || { log "Go is required to build Kubernetes"; exit 1; }
mkdir -p "$BIN"
# The source lies beside BIN, always at the same path, so Go's build cache serves a rebuild.
src="$(cd "$BIN/.." && pwd)/k8s-src"
export GOFLAGS=-mod=mod GOTOOLCHAIN=local
log "building Kubernetes $K8S_VERSION from the Go module proxy (once; 20-40 minutes on 2 cores)"
dir="$(go mod download -json "k8s.io/kubernetes@$K8S_VERSION" | sed -n 's/^\t"Dir": "\(.*\)",$/\1/p')"
[[ -d "$dir" ]] || { log "k8s.io/kubernetes@$K8S_VERSION: no source from the module proxy"; exit 1; }
rm -rf "$src"
cp -r "$dir" "$src"
chmod -R u+w "$src"
cd "$src"
rm -rf vendor go.work go.work.sum
sed -i -E "s#=> \./staging/src/(k8s\.io/[a-z0-9-]+)#=> \1 $STAGING_VERSION#" go.mod
sed -i '/k8s.io\/sample-/d' go.mod
go build -trimpath -ldflags="-s -w" -o "$BIN/" "${COMMANDS[@]/#/./cmd/}"
# The pod sandbox's process (registry.k8s.io/pause cannot be pulled): Kubernetes' own pause.c.
gcc -Os -static -DVERSION="$K8S_VERSION" -o "$BIN/pause" build/pause/linux/pause.c
echo "$K8S_VERSION" >"$stamp"
log "built ${COMMANDS[*]} pause into $BIN"
