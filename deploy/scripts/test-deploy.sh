#!/usr/bin/env bash
# make test-deploy: the container deployment, for real, on podman (no Docker engine needed).
#  1. installs podman, podman-compose, debootstrap, runc when missing (Debian packages)
#  2. builds a local base image (debootstrap bookworm + python3) unless BASE_IMAGE is given
#  3. prepares wheels on the host so the image build needs no network
#  4. builds cadre:local and cadre-nats:local from deploy/Dockerfile
#  5. tests/deploy: the compose stack end to end (example task, a killed agent replica) and
#     the 3-node cluster configuration (JetStream replicas 3)
#  6. the agent-runtime and CLI integration tests once more with CADRE_TEST_NATS=docker:
#     testcontainers starts cadre-nats:local through podman's Docker-compatible API (the
#     two example runs are left out here: the compose stack above already runs the example)
# Logs of every container: test-artifacts/deploy/. Exit 77 (and nothing tested) when this
# machine cannot install or run podman at all; any other non-zero exit is a real failure.
set -euo pipefail
cd "$(dirname "$0")/../.."
ROOT="$PWD"
PY="${PYTHON:-$ROOT/.venv/bin/python}"
START=$(date +%s)
step() { echo "== [$(( $(date +%s) - START ))s] $*"; }

need=()
for tool in podman podman-compose debootstrap runc; do
  command -v "$tool" >/dev/null 2>&1 || need+=("$tool")
done
# exit 77: this machine cannot run containers at all (no packages, no working podman). That
# is not a failure of Cadre's deployment; .ci/run reports it loudly as "not tested here".
cannot() { echo "test-deploy: NOT RUN: $*" >&2; exit 77; }
if [ "${#need[@]}" -gt 0 ]; then
  step "installing ${need[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -q >/dev/null || cannot "apt-get update failed (no root or no Debian mirror)"
  apt-get install -y -q podman podman-compose debootstrap runc catatonit >/dev/null \
    || cannot "apt-get install podman podman-compose debootstrap runc failed"
fi

export CONTAINERS_CONF="$ROOT/deploy/containers.conf"
podman info >/dev/null 2>&1 || cannot "podman cannot work here: $(podman info 2>&1 | tail -1)"
if [ -z "${BASE_IMAGE:-}" ]; then
  BASE_IMAGE=localhost/cadre-base:bookworm
  step "base image $BASE_IMAGE"
  deploy/scripts/make-base-image.sh "$BASE_IMAGE"
fi
export BASE_IMAGE

step "wheels"
deploy/scripts/prepare-wheels.sh "$PY"

step "building cadre:local and cadre-nats:local (BASE_IMAGE=$BASE_IMAGE)"
podman build -q -f deploy/Dockerfile --build-arg "BASE_IMAGE=$BASE_IMAGE" -t cadre:local . >/dev/null
podman build -q -f deploy/Dockerfile --build-arg "BASE_IMAGE=$BASE_IMAGE" --target nats -t cadre-nats:local . >/dev/null
podman images --format '{{.Repository}}:{{.Tag}} {{.Size}}' | grep -E 'cadre(-nats)?:local'

step "compose stack + cluster configuration (tests/deploy)"
CADRE_TEST_DEPLOY=1 "$PY" -m pytest tests/deploy -v -p no:cacheprovider -o addopts="" --timeout 900

step "runtime + CLI integration tests on a NATS container started by testcontainers through podman's socket"
SOCK_DIR="$(mktemp -d /tmp/cadre-podman.XXXXXX)"
# --log-level=info: the service logs each API request, the proof that testcontainers used it
podman --log-level=info system service --time=0 "unix://$SOCK_DIR/podman.sock" >"$SOCK_DIR/service.log" 2>&1 &
SERVICE_PID=$!
cleanup() { kill "$SERVICE_PID" 2>/dev/null || true; wait "$SERVICE_PID" 2>/dev/null || true; rm -rf "$SOCK_DIR"; }
trap cleanup EXIT
for _ in $(seq 1 100); do [ -S "$SOCK_DIR/podman.sock" ] && break; sleep 0.1; done
[ -S "$SOCK_DIR/podman.sock" ] || { cat "$SOCK_DIR/service.log"; exit 1; }
DOCKER_HOST="unix://$SOCK_DIR/podman.sock" \
TESTCONTAINERS_RYUK_DISABLED=true \
TESTCONTAINERS_CONNECTION_MODE=docker_host \
CADRE_TEST_NATS=docker \
CADRE_TEST_NATS_IMAGE=localhost/cadre-nats:local \
  "$PY" -m pytest tests/integration/test_agent_runtime.py tests/integration/test_cli.py \
    -k "not example" -q -p no:cacheprovider
created=$(grep -c 'POST /v[0-9.]*/containers/create .*tc-python' "$SOCK_DIR/service.log" || true)
echo "testcontainers created $created NATS container(s) through podman's Docker API"
[ "$created" -ge 1 ] || { echo "the integration tests did not go through testcontainers" >&2; exit 1; }
step "test-deploy passed"
