#!/usr/bin/env bash
# Sets up (if needed), checks the code with ruff (lint + format) and runs the test suite.
# Extra arguments go to pytest, e.g. scripts/test.sh -m "not slow" for the quick subset, or -n 0 for one process.
# The test files are shared out over the cores (pytest-xdist, at most 4 processes); each file runs whole in one process,
# so its module fixtures (a model loaded once, a Ray cluster) are built once. Files are handed out in the order
# tests/conftest.py gives (those with slow tests first), not xdist's most-tests-first.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh --dev
.venv/bin/ruff check .
.venv/bin/ruff format --check .
exec .venv/bin/python -m pytest -n auto --maxprocesses 4 --dist loadfile --no-loadscope-reorder --durations=40 "$@"
