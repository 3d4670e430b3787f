#!/bin/sh
# Cadre image entrypoint: the first argument names what this container runs.
#   orchestrator | researcher | developer | reviewer | monitor   a service (python -m services.<name>)
#   bootstrap       create/update streams, consumers, KV and object store, then exit
#   healthcheck R   exit 0 when this container's service R answers (used by compose healthchecks)
#   nats-server ... the NATS server binary shipped in the image
#   cadre ...       the CLI (submit, watch, result, status, ...); anything else is exec'd as is
set -eu
# One instance id per container: its hostname (the container id under docker and podman),
# so heartbeats, the monitor and `podman ps` name the same thing. CADRE_INSTANCE_ID overrides.
if [ -z "${CADRE_INSTANCE_ID:-}" ]; then
  CADRE_INSTANCE_ID="$(cat /proc/sys/kernel/hostname)"
  export CADRE_INSTANCE_ID
fi
cmd="${1:-help}"
[ "$#" -gt 0 ] && shift
case "$cmd" in
  orchestrator|researcher|developer|reviewer|monitor)
    exec python -m "services.$cmd" "$@" ;;
  bootstrap)
    exec python -m shared.bus.bootstrap "$@" ;;
  healthcheck)
    exec python /usr/local/lib/cadre/healthcheck.py "$@" ;;
  help|--help|-h)
    sed -n '2,7p' "$0"; exit 0 ;;
  *)
    exec "$cmd" "$@" ;;
esac
