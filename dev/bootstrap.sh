#!/usr/bin/env bash
# Installs the project's Python environment (.venv) and developer tools (.tools).
# Idempotent: does nothing when pyproject.toml and the tool versions are unchanged.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
log() { printf '[bootstrap] %s\n' "$*" >&2; }

BUF_VERSION="1.47.2"

if [[ ! -x .venv/bin/python ]]; then
  log "creating .venv with $(python3 --version)"
  python3 -m venv .venv
fi
want="$(sha256sum pyproject.toml | cut -c1-16)"
if [[ "$(cat .venv/.installed 2>/dev/null)" != "$want" ]]; then
  log "installing Python dependencies into .venv"
  .venv/bin/python -m pip install -q --upgrade pip
  .venv/bin/python -m pip install -q -e '.[dev]'
  echo "$want" >.venv/.installed
fi

if [[ "$(cat .tools/.buf-version 2>/dev/null)" != "$BUF_VERSION" ]]; then
  log "installing buf $BUF_VERSION from npm into .tools"
  command -v npm >/dev/null || { log "npm is required for buf (apt-get install nodejs npm)"; exit 1; }
  mkdir -p .tools
  npm install --silent --no-audit --no-fund --prefix .tools "@bufbuild/buf@$BUF_VERSION" >/dev/null 2>&1
  echo "$BUF_VERSION" >.tools/.buf-version
fi

command -v go >/dev/null || { log "Go is required to build the local MongoDB-compatible server"; exit 1; }
