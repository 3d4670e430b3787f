#!/usr/bin/env bash
# Fill deploy/wheels/ with wheels of Cadre's runtime dependencies (and the setuptools that builds
# Cadre itself), so `podman build`/`docker build` of deploy/Dockerfile needs no network.
# Built for the host's Python: it must be the base image's version (3.11). Cached: nothing is
# rebuilt while pyproject.toml is older than the stamp.
# Usage: deploy/scripts/prepare-wheels.sh [PYTHON]   (default: .venv/bin/python, else python3)
set -euo pipefail
cd "$(dirname "$0")/../.."
PY="${1:-}"
if [ -z "$PY" ]; then
  if [ -x .venv/bin/python ]; then PY=.venv/bin/python; else PY=python3; fi
fi
OUT=deploy/wheels
STAMP="$OUT/.stamp"
if [ -f "$STAMP" ] && [ "$STAMP" -nt pyproject.toml ]; then
  echo "wheels up to date in $OUT ($(ls "$OUT"/*.whl | wc -l) files)"
  exit 0
fi
rm -f "$OUT"/*.whl "$STAMP"
"$PY" -m pip wheel --quiet --disable-pip-version-check --wheel-dir "$OUT" . 'setuptools>=68' wheel
rm -f "$OUT"/cadre-*.whl   # the image builds Cadre from its own copy of the source
touch "$STAMP"
echo "wheels ready in $OUT ($(ls "$OUT"/*.whl | wc -l) files, $(du -sh "$OUT" | cut -f1))"
