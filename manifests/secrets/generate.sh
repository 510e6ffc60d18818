#!/usr/bin/env bash
# Makes manifests/secrets/NAME.env from every NAME.env.example, replacing each `change-me-...`
# placeholder with a random value: the same placeholder gets the same value in every file, so
# shared credentials agree (auth's and MySQL's MYSQL_PASSWORD, the broker's password inside
# each RABBITMQ_URL, ...). Never overwrites: with every .env present it does nothing, and with
# only some present it stops (new random values would not match the old ones).
# Then makes DIR/tls/: the project CA and the mutual-TLS certificates of internal gRPC
# (dev/certs.py, with the repository's .venv; idempotent: run it again to renew what expires).
#
#   bash manifests/secrets/generate.sh [DIR]     (DIR defaults to this script's folder)
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
DIR="${1:-$HERE}"
REPO="${VIDEO2MP3_ROOT:-$(cd "$HERE/../.." && pwd)}"
NAMESPACE="${NAMESPACE:-video2mp3}"

certificates() {
  local python="${PYTHON:-$REPO/.venv/bin/python}"
  [[ -x "$python" ]] || python="python3"
  if ! "$python" -c 'import cryptography' 2>/dev/null; then
    echo "dev/certs.py needs the 'cryptography' package: run 'make bootstrap' first" >&2
    exit 1
  fi
  "$python" "$REPO/dev/certs.py" "$DIR/tls" --namespace "$NAMESPACE"
}
examples=("$DIR"/*.env.example)
missing=()
for example in "${examples[@]}"; do
  [[ -e "${example%.example}" ]] || missing+=("${example%.example}")
done
if ((${#missing[@]} == 0)); then
  echo "every secret env file exists in $DIR" >&2
  certificates
  exit 0
fi
if ((${#missing[@]} != ${#examples[@]})); then
  echo "some secret env files exist and these do not: ${missing[*]}" >&2
  echo "write them by hand from their .env.example with the values of the others" >&2
  exit 1
fi
declare -A value=()
random() { od -An -N24 -tx1 /dev/urandom | tr -d ' \n'; } # 48 hex digits: safe inside URLs
for example in "${examples[@]}"; do
  content="$(cat "$example")"
  while read -r placeholder; do
    [[ -n "$placeholder" ]] || continue
    [[ -n "${value[$placeholder]:-}" ]] || value[$placeholder]="$(random)"
    content="${content//"$placeholder"/"${value[$placeholder]}"}"
  done < <(grep -o 'change-me-[a-z0-9-]*' "$example" | sort -u)
  (umask 077 && printf '%s\n' "$content" >"${example%.example}")
  echo "made ${example%.example}" >&2
done
certificates
echo "now set your SMTP relay in $DIR/notifier.env" >&2
