"""Starting executors on demand: the local worker and the Ray driver, detached from whoever submitted.

`ensure_worker()` starts what the queued steps need: a local worker (`python -m engine worker`) while a local run has
queued steps and fewer than liveness.max_workers() are alive; the Ray driver (`python -m engine worker --executor ray`,
engine.runs.ray_driver) while a Ray run has queued steps and none is alive. Each starts in its own session (it outlives a
closed tab, a stopped dashboard or a Ctrl-C in the terminal that submitted) and leaves by itself after
WORKER_IDLE_EXIT_S with nothing queued.
"""

from __future__ import annotations

import subprocess
import sys

from engine.cache.storage import runs_dir
from engine.options.config import CACHE_ENV, REPO_ROOT, cache_dir
from engine.runs.store.liveness import max_workers
from engine.runs.store.runstore import open_store

WORKER_IDLE_EXIT_S = 60.0  # a worker started on demand leaves after this long with nothing queued

_SPAWNED: list[subprocess.Popen] = []


def spawn_worker(idle_exit: float = WORKER_IDLE_EXIT_S, executor: str = "local") -> int:
    """Start `python -m engine worker` (or the Ray driver) detached from this process. Returns its pid."""
    import os

    for proc in list(_SPAWNED):  # reap workers we started that have exited, so no zombie lingers
        if proc.poll() is not None:
            _SPAWNED.remove(proc)
    env = {**os.environ, CACHE_ENV: str(cache_dir())}
    extra = ["--executor", executor] if executor != "local" else []
    with open(runs_dir() / "worker.log", "ab") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "engine", "worker", "--idle-exit", str(idle_exit), *extra],
            cwd=REPO_ROOT,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    _SPAWNED.append(proc)
    return proc.pid


def check_ray() -> None:
    """Refuse the Ray executor, saying how to install it, when the `ray` package is missing."""
    import importlib.util

    from engine.errors import ClinBenchError

    if importlib.util.find_spec("ray") is None:
        raise ClinBenchError(
            "executor: ray needs the Ray package, which is not installed. Install it with `bash scripts/setup.sh --ray` "
            "(or `.venv/bin/pip install -r requirements-ray.txt`), or choose executor: local."
        )


def ensure_worker() -> int | None:
    """Start the executors that queued steps wait for. Returns the pid of the last one started, or None."""
    started = None
    with open_store() as rs:
        rs.recover()
        wanted = []
        if rs.queued("local") and len(rs.alive_workers("local")) < max_workers():
            wanted.append("local")
        if rs.queued("ray") and not rs.alive_workers("ray"):
            wanted.append("ray")
    for executor in wanted:
        started = spawn_worker(executor=executor)
    return started
