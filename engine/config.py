"""Where ClinBench keeps things: the cache folder, bundled resources, package versions."""

from __future__ import annotations

import os
import sys
from importlib import metadata
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent
REPO_ROOT = PACKAGE_DIR.parent
RESOURCES = PACKAGE_DIR / "resources"
DEFAULT_DATASET = RESOURCES / "default_letters.csv"

CACHE_ENV = "CLINBENCH_CACHE"


def cache_dir() -> Path:
    """The cache folder: $CLINBENCH_CACHE, else `cache/` at the repo root. Created on use."""
    path = Path(os.environ.get(CACHE_ENV) or REPO_ROOT / "cache").expanduser().resolve()
    path.mkdir(parents=True, exist_ok=True)
    return path


_VERSIONED = ("torch", "transformers", "peft", "scikit-learn", "imbalanced-learn", "numpy", "joblib")


def package_versions() -> dict[str, str]:
    """Versions of the packages that decide the numbers, for manifests."""
    out = {"python": sys.version.split()[0]}
    for name in _VERSIONED:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out
