#!/usr/bin/env bash
# Write ./.env for docker-compose.yml: one random NATS password per user (never committed).
# An existing .env is kept; a password it lacks (a user added since, e.g. CADRE_PW_OPERATOR)
# is appended. --force replaces the whole file (every password changes).
# Usage: deploy/scripts/gen-env.sh [--force] [PATH]   (default PATH: .env beside docker-compose.yml)
set -euo pipefail
cd "$(dirname "$0")/../.."
FORCE=0
if [ "${1:-}" = "--force" ]; then FORCE=1; shift; fi
ENV_FILE="${1:-.env}"
USERS="BOOTSTRAP ORCHESTRATOR RESEARCHER DEVELOPER REVIEWER MONITOR OPERATOR CLIENT"
# a letter first, then hex: nats-server parses the value as a config token, so a value
# starting with a digit or '-' would be read as a number (see deploy/nats/accounts.conf)
password() { echo "pw$(head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n')"; }
umask 077
if [ -f "$ENV_FILE" ] && [ "$FORCE" -eq 0 ]; then
  added=()
  for user in $USERS; do
    if ! grep -q "^CADRE_PW_${user}=" "$ENV_FILE"; then
      echo "CADRE_PW_${user}=$(password)" >>"$ENV_FILE"
      added+=("CADRE_PW_${user}")
    fi
  done
  if [ "${#added[@]}" -gt 0 ]; then
    echo "$ENV_FILE exists; kept it and added ${added[*]} (restart nats to load them)"
  else
    echo "$ENV_FILE exists; keeping it (use --force to replace)"
  fi
  exit 0
fi
{
  echo "# Cadre deployment secrets, generated $(date -u +%Y-%m-%dT%H:%M:%SZ) by deploy/scripts/gen-env.sh"
  for user in $USERS; do
    echo "CADRE_PW_${user}=$(password)"
  done
} >"$ENV_FILE"
echo "wrote $ENV_FILE"
