#!/usr/bin/env bash
# The recipe of the local base image: Debian bookworm (debootstrap --variant=minbase) with
# Debian's Python 3.11, in the role of the public python:3.11-slim-bookworm that the Dockerfile
# names by default (PYTHON_IMAGE). dev/image.sh tags the image it makes from this file with a
# hash of this file, so a change here (and only a change here) makes a new base.
#
#   bash dev/image_base.sh ROOTFS_DIR      debootstrap into ROOTFS_DIR (which must not exist)
#
# What the Dockerfile needs of its base: `python` (python-is-python3) with `venv` and the pip
# wheel that venv installs (python3.11-venv), groupadd/useradd (passwd, in minbase), and the
# CA certificates a service needs for TLS to the outside (SMTP relays).
set -euo pipefail
ROOTFS="${1:?usage: dev/image_base.sh ROOTFS_DIR}"
SUITE=bookworm
MIRROR="${DEBIAN_MIRROR:-http://deb.debian.org/debian}"
# python3-distutils: python3.11-venv needs python3.11-distutils, a virtual package that only
# apt resolves (debootstrap does not).
PACKAGES=python3.11,python3.11-venv,python3-distutils,python-is-python3,ca-certificates

if [[ -e "$ROOTFS" ]]; then
  echo "dev/image_base.sh: $ROOTFS exists; give a new directory" >&2
  exit 2
fi
debootstrap --variant=minbase --include="$PACKAGES" "$SUITE" "$ROOTFS" "$MIRROR" >&2
# Security fixes: bookworm-security and bookworm-updates on top of the release.
cat >"$ROOTFS/etc/apt/sources.list" <<EOF
deb $MIRROR $SUITE main
deb $MIRROR $SUITE-updates main
deb ${MIRROR%/debian}/debian-security $SUITE-security main
EOF
chroot "$ROOTFS" apt-get update -qq >&2
DEBIAN_FRONTEND=noninteractive chroot "$ROOTFS" apt-get -y -qq upgrade >&2
# What an image does not need: package caches and lists, documentation, translations.
chroot "$ROOTFS" apt-get clean
rm -rf "$ROOTFS"/var/lib/apt/lists/* "$ROOTFS"/usr/share/doc/* "$ROOTFS"/usr/share/man/* \
  "$ROOTFS"/usr/share/info/* "$ROOTFS"/usr/share/locale/* "$ROOTFS"/var/cache/debconf/*-old \
  "$ROOTFS"/var/log/*.log "$ROOTFS"/var/log/apt/* "$ROOTFS"/debootstrap
