"""Where ClinBench keeps things: the cache folder, bundled resources; and what it runs on: package versions and the
machine (`environment()`: ClinBench version, git commit, Python, platform, CPU, GPU), for manifests."""

from __future__ import annotations

import functools
import os
import platform
import subprocess
import sys
from importlib import metadata
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parents[1]  # engine/
REPO_ROOT = PACKAGE_DIR.parent
RESOURCES = PACKAGE_DIR / "resources"
DEFAULT_DATASET = RESOURCES / "default_letters.csv"
DEFAULT_NAME = "default"  # how a spec (data: default), the CLI (--data default) and the dashboard name the bundled letters

CACHE_ENV = "CLINBENCH_CACHE"


def cache_dir() -> Path:
    """The cache folder: $CLINBENCH_CACHE, else `cache/` at the repo root. Created on use."""
    path = Path(os.environ.get(CACHE_ENV) or REPO_ROOT / "cache").expanduser().resolve()
    path.mkdir(parents=True, exist_ok=True)
    return path


_VERSIONED = (
    "torch",
    "transformers",
    "tokenizers",
    "peft",
    "scikit-learn",
    "imbalanced-learn",
    "numpy",
    "scipy",
    "joblib",
    "datasketch",
)


def package_versions() -> dict[str, str]:
    """Versions of the packages that decide the numbers, for manifests."""
    out = {"python": sys.version.split()[0]}
    for name in _VERSIONED:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out


def _git(*args: str) -> str | None:
    """stdout of a git command in the repository, or None when git is missing, slow (2 s) or fails."""
    try:
        done = subprocess.run(
            ["git", "-C", str(REPO_ROOT), *args],
            capture_output=True,
            text=True,
            timeout=2,
            env={**os.environ, "GIT_OPTIONAL_LOCKS": "0"},  # `status` must not take the index lock of a working copy in use
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip() if done.returncode == 0 else None


def git_commit() -> str | None:
    """HEAD of the repository ClinBench runs from, suffixed "-dirty" when tracked files have uncommitted changes; None
    when it is not a git checkout (e.g. an installed copy) or git cannot answer."""
    if not (REPO_ROOT / ".git").exists():
        return None
    head = _git("rev-parse", "HEAD")
    if not head:
        return None
    changes = _git("status", "--porcelain", "--untracked-files=no")
    return head + ("-dirty" if changes else "") if changes is not None else head


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text(errors="replace").splitlines():
            if line.lower().startswith(("model name", "hardware", "cpu model")) and ":" in line:
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _gpu_name() -> str | None:
    """The first CUDA device's name: from torch when it is already imported (never imported here just for this), else
    from the NVIDIA driver's /proc entries; None without a GPU."""
    torch = sys.modules.get("torch")
    if torch is not None:
        try:
            return torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
        except Exception:  # a broken CUDA set-up must not stop a manifest from being written
            return None
    for info in sorted(Path("/proc/driver/nvidia/gpus").glob("*/information")):
        try:
            for line in info.read_text(errors="replace").splitlines():
                if line.startswith("Model:"):
                    return line.split(":", 1)[1].strip()
        except OSError:
            continue
    return None


@functools.cache
def environment() -> dict:
    """What a result was computed on, for manifests: ClinBench version, git commit (None outside a checkout), Python,
    platform, CPU model and count, GPU (None without one). Computed once per process; never raises."""
    from engine import __version__  # the package's __init__ holds no code, so this imports no higher layer

    return {
        "clinbench": __version__,
        "git_commit": git_commit(),
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "cpu": _cpu_model(),
        "n_cpus": os.cpu_count(),
        "gpu": _gpu_name(),
    }
