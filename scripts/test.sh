#!/usr/bin/env bash
# Sets up (if needed), checks the code with ruff (lint + format) and runs the test suite.
# Extra arguments go to pytest, e.g. scripts/test.sh -m "not slow" for the quick subset.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh --dev
.venv/bin/ruff check .
.venv/bin/ruff format --check .
exec .venv/bin/python -m pytest --durations=40 "$@"
