#!/usr/bin/env bash
# Builds the project environment in .venv/ (idempotent; re-running is cheap).
#   scripts/setup.sh          runtime + bundled models
#   scripts/setup.sh --dev    also test and benchmark tools
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
    "$PY" -m venv .venv
fi
PIP=(.venv/bin/python -m pip install --quiet --disable-pip-version-check)
# torch first and pinned: an unpinned torch would pull several GB of CUDA packages.
"${PIP[@]}" torch==2.13.0
"${PIP[@]}" -r requirements.txt
"${PIP[@]}" --no-deps -r requirements-bundled.txt
if [ "${1:-}" = "--dev" ]; then
    "${PIP[@]}" -r requirements-dev.txt
fi
.venv/bin/python -c "import torch; assert torch.__version__.startswith('2.13.0'), torch.__version__"
echo "ClinBench environment ready in .venv/"
