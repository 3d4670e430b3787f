#!/usr/bin/env bash
# make bench: installs redis-server from Debian's packages when it is missing (the Celery
# comparison needs it). The benchmark starts its own redis-server on 127.0.0.1 with a
# random free port and stops it afterwards; the package's system service is not used.
# Exit 0 when redis-server is on PATH afterwards; non-zero (with the reason) otherwise.
set -euo pipefail
if command -v redis-server >/dev/null 2>&1; then
  exit 0
fi
if [ "$(id -u)" -ne 0 ]; then
  echo "install-redis: redis-server is missing and this is not root: apt-get install redis-server" >&2
  exit 1
fi
echo "install-redis: installing redis-server (Debian package)" >&2
export DEBIAN_FRONTEND=noninteractive
# another apt run (unattended upgrades, a parallel install) holds the lock: wait for it
apt-get -o DPkg::Lock::Timeout=600 update -qq
# policy-rc.d 101: the package must not start its own system service (the benchmark starts one)
policy=/usr/sbin/policy-rc.d
restore=""
if [ ! -e "$policy" ]; then
  printf '#!/bin/sh\nexit 101\n' >"$policy" && chmod +x "$policy" && restore=1
fi
trap '[ -n "$restore" ] && rm -f "$policy"' EXIT
apt-get -o DPkg::Lock::Timeout=600 install -y -qq --no-install-recommends redis-server >/dev/null
command -v redis-server >/dev/null 2>&1 || { echo "install-redis: redis-server still not on PATH" >&2; exit 1; }
