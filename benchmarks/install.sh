#!/usr/bin/env bash
# Installs what `make bench` needs beyond the Python environment: Debian's ffmpeg (the
# baseline, and the generator of the inputs). Idempotent: does nothing when installed.
set -euo pipefail
log() { printf '[bench] %s\n' "$*" >&2; }
if dpkg -s ffmpeg >/dev/null 2>&1 && [[ -x /usr/bin/ffmpeg ]]; then
  exit 0
fi
log "installing Debian's ffmpeg with apt-get"
sudo=""; [[ $(id -u) -ne 0 ]] && sudo="sudo"
$sudo apt-get update -qq
DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends ffmpeg >/dev/null
