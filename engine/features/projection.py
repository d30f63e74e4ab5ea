"""2-D UMAP maps of stored embeddings, cached in cache/projections/, and the JIT warm-up.

`project(embeddings_key)` reads cache/embeddings/<key>.npy (checked against the sha256 in
its .json), runs UMAP with a fixed seed and stores the coordinates as
projections/<pkey>.npy with a .json saying what made them; a repeated request loads them.
UMAP's numba functions compile on first use (~30 s on 2 cores); `warm_up()` compiles them on
a small random array, in a thread that first lets queued and running steps go (`start_warm_up`), and
numba's on-disk cache (NUMBA_CACHE_DIR, set to cache/numba unless
already set) keeps the compiled code for the next process.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import threading
import time
from collections.abc import Callable

import numpy as np

from engine.cache.storage import atomic_path, atomic_write_json, embeddings_dir, projections_dir, sha256_file, sha256_json
from engine.errors import ArtifactError
from engine.options.config import cache_dir

WARM_UP_DELAY_S = 10.0  # after the dashboard opens: a run queued at once starts before the compiling
DEFAULTS = {"n_neighbors": 15, "min_dist": 0.1, "metric": "cosine", "seed": 0}


def _umap():
    os.environ.setdefault("NUMBA_CACHE_DIR", str(cache_dir() / "numba"))
    import umap

    return umap


def stored_embeddings(key: str) -> tuple[np.ndarray, str]:
    """A stored embeddings matrix (memory-mapped, rows in the dataset's order), checked against its hash, and the hash."""
    npy, meta_path = embeddings_dir() / f"{key}.npy", embeddings_dir() / f"{key}.json"
    if not npy.exists() or not meta_path.exists():
        raise ArtifactError(f"The embeddings {key} are not in the cache (deleted?). Re-run the evaluation to recreate them.")
    meta = json.loads(meta_path.read_text())
    digest = sha256_file(npy)
    if meta.get("npy_sha256") != digest:
        raise ArtifactError(f"{npy} does not match the hash in {meta_path.name}; delete both and re-run the evaluation.")
    return np.load(npy, mmap_mode="r"), digest


def projection_key(embeddings_key: str, params: dict) -> str:
    import umap

    return sha256_json({"embeddings": embeddings_key, "params": params, "umap": umap.__version__})[:32]


def cached(embeddings_key: str, **params) -> np.ndarray | None:
    """The stored map of these embeddings, or None (never computes)."""
    p = {**DEFAULTS, **params}
    path = projections_dir() / f"{projection_key(embeddings_key, p)}.npy"
    return np.load(path) if path.exists() else None


def project(embeddings_key: str, **params) -> np.ndarray:
    """(n_letters, 2) float32 UMAP coordinates of an embeddings file, from the cache when possible."""
    p = {**DEFAULTS, **params}
    hit = cached(embeddings_key, **p)
    if hit is not None:
        return hit
    X, digest = stored_embeddings(embeddings_key)
    umap = _umap()
    n = X.shape[0]
    t0 = time.perf_counter()
    reducer = umap.UMAP(
        n_components=2,
        n_neighbors=min(p["n_neighbors"], max(2, n - 1)),
        min_dist=p["min_dist"],
        metric=p["metric"],
        random_state=p["seed"],
        n_jobs=1,
    )
    coords = reducer.fit_transform(np.asarray(X, dtype=np.float32)).astype(np.float32)
    pkey = projection_key(embeddings_key, p)
    with atomic_path(projections_dir() / f"{pkey}.npy") as tmp, open(tmp, "wb") as fh:
        np.save(fh, coords)
    atomic_write_json(
        projections_dir() / f"{pkey}.json",
        {
            "embeddings_key": embeddings_key,
            "embeddings_sha256": digest,
            "params": p,
            "umap": umap.__version__,
            "seconds": time.perf_counter() - t0,
        },
    )
    return coords


_WARM = {"state": "cold", "seconds": None, "error": None}
_WARM_LOCK = threading.Lock()


def warm_up() -> float:
    """Compile UMAP's numba code on a small random array (seconds taken). Safe to call again: cheap after the first time."""
    t0 = time.perf_counter()
    umap = _umap()
    X = np.random.default_rng(0).normal(size=(200, 16)).astype(np.float32)
    umap.UMAP(n_components=2, n_neighbors=10, metric="cosine", random_state=0, n_jobs=1).fit_transform(X)
    return time.perf_counter() - t0


def start_warm_up(wait_while: Callable[[], bool] | None = None, delay: float = WARM_UP_DELAY_S) -> dict:
    """Start warm_up() once per process in a daemon thread; returns its state (cold | warming | warm | failed).

    The thread first waits `delay` seconds and then for as long as `wait_while()` is true (the dashboard passes "a step is
    queued or running"): compiling takes ~15-30 CPU seconds, which would otherwise slow the first step of a run queued
    right after the page opened (on Linux each session's processes share the CPU as one group, so the thread's low
    priority alone does not protect a worker in another session)."""

    def target():
        if sys.platform.startswith("linux"):  # this thread only (Linux nice is per thread)
            with contextlib.suppress(OSError):
                os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 19)
        time.sleep(delay)
        while wait_while is not None and wait_while():
            time.sleep(2.0)
        try:
            _WARM["seconds"] = warm_up()
            _WARM["state"] = "warm"
        except Exception as exc:  # shown in the UI; a failed warm-up only means the first map is slower
            _WARM["state"], _WARM["error"] = "failed", f"{type(exc).__name__}: {exc}"

    with _WARM_LOCK:
        if _WARM["state"] == "cold":
            _WARM["state"] = "warming"
            threading.Thread(target=target, name="umap-warm-up", daemon=True).start()
    return dict(_WARM)


def warm_state() -> dict:
    return dict(_WARM)
