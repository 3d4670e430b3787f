#!/usr/bin/env bash
# Build a minimal Debian bookworm base image with python3 locally (no registry pull needed):
# debootstrap from the machine's configured Debian mirror, then `podman import`.
# Usage: deploy/scripts/make-base-image.sh [IMAGE]   (default localhost/cadre-base:bookworm)
# Takes about a minute; does nothing when the image already exists.
set -euo pipefail
IMAGE="${1:-localhost/cadre-base:bookworm}"
if podman image exists "$IMAGE"; then
  echo "base image $IMAGE already present"
  exit 0
fi
# the mirror apt already uses on this machine (deb822 .sources or a classic sources.list)
MIRROR="$(grep -hoE '^URIs:\s*\S+/debian/?$' /etc/apt/sources.list.d/*.sources 2>/dev/null | head -1 | awk '{print $2}' || true)"
if [ -z "$MIRROR" ]; then
  MIRROR="$(grep -hoE '^deb\s+\S+/debian/?\s' /etc/apt/sources.list 2>/dev/null | head -1 | awk '{print $2}' || true)"
fi
MIRROR="${MIRROR:-http://deb.debian.org/debian}"
ROOTFS="$(mktemp -d /var/tmp/cadre-rootfs.XXXXXX)"
trap 'rm -rf "$ROOTFS"' EXIT
echo "debootstrap bookworm from $MIRROR into $ROOTFS"
debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates,bubblewrap bookworm "$ROOTFS" "$MIRROR" \
  >"$ROOTFS.log" 2>&1 || { tail -30 "$ROOTFS.log"; exit 1; }
rm -f "$ROOTFS.log"
rm -rf "$ROOTFS"/var/cache/apt/archives/*.deb "$ROOTFS"/var/lib/apt/lists/* "$ROOTFS"/usr/share/doc/* \
  "$ROOTFS"/usr/share/man/* "$ROOTFS"/usr/share/locale/*
tar -C "$ROOTFS" -c . | podman import \
  --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
  --change 'ENV LANG=C.UTF-8' \
  --change 'CMD ["/bin/bash"]' \
  - "$IMAGE"
echo "base image $IMAGE ready"
