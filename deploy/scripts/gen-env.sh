#!/usr/bin/env bash
# Write ./.env for docker-compose.yml: one random NATS password per user (never committed).
# Keeps an existing .env unless --force is given.
# Usage: deploy/scripts/gen-env.sh [--force] [PATH]   (default PATH: .env beside docker-compose.yml)
set -euo pipefail
cd "$(dirname "$0")/../.."
FORCE=0
if [ "${1:-}" = "--force" ]; then FORCE=1; shift; fi
ENV_FILE="${1:-.env}"
if [ -f "$ENV_FILE" ] && [ "$FORCE" -eq 0 ]; then
  echo "$ENV_FILE exists; keeping it (use --force to replace)"
  exit 0
fi
umask 077
{
  echo "# Cadre deployment secrets, generated $(date -u +%Y-%m-%dT%H:%M:%SZ) by deploy/scripts/gen-env.sh"
  for user in BOOTSTRAP ORCHESTRATOR RESEARCHER DEVELOPER REVIEWER MONITOR OPERATOR CLIENT; do
    # a letter first, then hex: nats-server parses the value as a config token, so a value
    # starting with a digit or '-' would be read as a number (see deploy/nats/accounts.conf)
    echo "CADRE_PW_${user}=pw$(head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n')"
  done
} >"$ENV_FILE"
echo "wrote $ENV_FILE"
