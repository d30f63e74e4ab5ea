#!/usr/bin/env bash
# Builds the project environment in .venv/ (idempotent; re-running is cheap).
#   scripts/setup.sh          runtime + bundled models
#   scripts/setup.sh --dev    also test and benchmark tools (and Ray, so the tests cover the Ray executor)
#   scripts/setup.sh --ray    also Ray, for `executor: ray` (a Ray cluster, or parallel steps on this machine)
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
if [ "${1:-}" = "--dev" ] && ! command -v c++ >/dev/null 2>&1; then
    if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = "0" ]; then
        echo "Installing a C++ compiler and cmake (Debian packages) to build llama-cpp-python for the tests"
        apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq g++ cmake >/dev/null
    else
        echo "NOTE: no C++ compiler: the test set-up builds llama-cpp-python from source (sudo apt-get install g++ cmake)." >&2
    fi
fi
if [ "${1:-}" = "--dev" ]; then
    # llama-cpp-python (the tests' OpenAI-compatible server) compiles llama.cpp from source on first install (cmake and a
    # C++ compiler; pip keeps the built wheel): portable code, not tuned to this CPU, so the build runs on any CI machine.
    CMAKE_ARGS="${CMAKE_ARGS:--DGGML_NATIVE=OFF}" "${PIP[@]}" -r requirements-dev.txt
fi
if [ "${1:-}" = "--dev" ] || [ "${1:-}" = "--ray" ]; then
    "${PIP[@]}" -r requirements-ray.txt
fi
# Chromium: kaleido renders PNG/SVG exports with it, and the browser tests drive it (Playwright).
if ! command -v chromium >/dev/null 2>&1 && [ -z "${BROWSER_PATH:-}" ]; then
    if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = "0" ]; then
        echo "Installing chromium (Debian package) for chart export and browser tests"
        apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
    else
        echo "NOTE: chromium is not installed and cannot be installed here (needs apt-get as root)." >&2
        echo "      PNG/SVG chart export and the browser tests need it: sudo apt-get install chromium," >&2
        echo "      or set BROWSER_PATH to a Chrome/Chromium executable. Everything else works without it." >&2
    fi
fi
.venv/bin/python -c "import torch; assert torch.__version__.startswith('2.13.0'), torch.__version__"
# The bundled models made ready in the cache once (SmolLM2's GGUF converted to safetensors, ~20 s), not on the first run.
.venv/bin/python -m engine models --prepare
echo "ClinBench environment ready in .venv/"
