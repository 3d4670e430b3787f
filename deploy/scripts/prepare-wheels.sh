#!/usr/bin/env bash
# Fill deploy/wheels/ with the exact files requirements/runtime.txt locks (Cadre's runtime
# dependencies and the setuptools that builds Cadre itself, hashes checked), so `podman build` /
# `docker build` of deploy/Dockerfile needs no network. Downloaded for the host's Python and
# platform: it must be the base image's (3.11). Cached: nothing is fetched while the lock is
# older than the stamp.
# Usage: deploy/scripts/prepare-wheels.sh [PYTHON]   (default: .venv/bin/python, else python3)
set -euo pipefail
cd "$(dirname "$0")/../.."
PY="${1:-}"
if [ -z "$PY" ]; then
  if [ -x .venv/bin/python ]; then PY=.venv/bin/python; else PY=python3; fi
fi
OUT=deploy/wheels
STAMP="$OUT/.stamp"
LOCK=requirements/runtime.txt
if [ -f "$STAMP" ] && [ "$STAMP" -nt "$LOCK" ]; then
  echo "wheels up to date in $OUT ($(ls "$OUT"/*.whl | wc -l) files)"
  exit 0
fi
rm -f "$OUT"/*.whl "$STAMP"
"$PY" -m pip download --quiet --disable-pip-version-check --require-hashes --no-deps \
  --only-binary=:all: --dest "$OUT" -r "$LOCK"
touch "$STAMP"
echo "wheels ready in $OUT ($(ls "$OUT"/*.whl | wc -l) files, $(du -sh "$OUT" | cut -f1))"
