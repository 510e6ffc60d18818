#!/usr/bin/env bash
# Generates Python stubs (+ mypy stubs) from protos/ into the directory given (default gen/).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
OUT="${1:-$ROOT/gen}"
cd "$ROOT"
rm -rf "$OUT/video2mp3"
mkdir -p "$OUT"
mapfile -t files < <(find protos -name '*.proto' | sort)
PATH="$ROOT/.venv/bin:$PATH" .venv/bin/python -m grpc_tools.protoc -I protos \
  --python_out="$OUT" --grpc_python_out="$OUT" --mypy_out=quiet:"$OUT" --mypy_grpc_out=quiet:"$OUT" \
  "${files[@]}"
# Make every generated directory a regular package.
find "$OUT/video2mp3" -type d -exec sh -c 'touch "$1/__init__.py"' _ {} \;
