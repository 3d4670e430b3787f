#!/usr/bin/env bash
# Install the Debian packages a make target drives for real, when they are missing.
# Usage: deploy/scripts/system-packages.sh test|bench
# `make test` and `make bench` call it before they start, so no test installs anything itself.
# Without root or apt-get it installs nothing and says what is missing; the tests that need a
# missing program then skip with that reason (pytest's -ra summary lists them).
set -euo pipefail
case "${1:-}" in
  # chromium: the monitor dashboard test; bubblewrap: the sandbox for workspace code
  test)  want=(chromium:chromium bwrap:bubblewrap) ;;
  # redis-server: the broker and result backend of the Celery peer in the benchmark
  bench) want=(redis-server:redis-server bwrap:bubblewrap) ;;
  *) echo "usage: $0 test|bench" >&2; exit 2 ;;
esac
missing=()
for pair in "${want[@]}"; do
  exe="${pair%%:*}" pkg="${pair#*:}"
  command -v "$exe" >/dev/null 2>&1 || missing+=("$pkg")
done
[ "${#missing[@]}" -eq 0 ] && exit 0
if [ "$(id -u)" -ne 0 ] || ! command -v apt-get >/dev/null 2>&1; then
  echo "system-packages: missing ${missing[*]} (not root or no apt-get: install them by hand;" \
       "the tests that need them will skip and say so)" >&2
  exit 0
fi
echo "system-packages: apt-get install ${missing[*]}" >&2
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq >/dev/null
apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
