"""Starting executors on demand: the local worker and the Ray driver, detached from whoever submitted.

`ensure_worker()` starts what the queued steps need: a local worker (`python -m engine worker`) while a local run has
queued steps and fewer than liveness.max_workers() are alive; the Ray driver (`python -m engine worker --executor ray`,
engine.runs.ray_driver) while a Ray run has queued steps and none is alive. Each starts in its own session (it outlives a
closed tab, a stopped dashboard or a Ctrl-C in the terminal that submitted) and leaves by itself after
WORKER_IDLE_EXIT_S with nothing queued. Submitting and resuming call it, and so does whatever lists runs (the CLI's `runs`
and `runs show`, the Runs page): steps left queued when a worker was killed do not wait for the next submission. Each
executor started is a `Started`, whose `message` says why. One this process started that has not registered yet counts
as alive, so a page that lists runs every 2 s does not start a second one.
"""

from __future__ import annotations

import subprocess
import sys
from dataclasses import dataclass

from engine.cache.storage import runs_dir
from engine.options.config import CACHE_ENV, REPO_ROOT, cache_dir
from engine.runs.store.liveness import max_workers
from engine.runs.store.runstore import open_store

WORKER_IDLE_EXIT_S = 60.0  # a worker started on demand leaves after this long with nothing queued

_SPAWNED: list[tuple[str, subprocess.Popen]] = []  # (executor, process) of those this process started


@dataclass(frozen=True)
class Started:
    """An executor started because steps were queued for it and none was alive."""

    executor: str  # local | ray
    pid: int
    queued: int  # the steps that waited for it

    @property
    def message(self) -> str:
        kind, article = ("Ray driver", "the") if self.executor == "ray" else ("worker", "a")
        return f"{self.queued} step(s) were queued with no {kind} running: started {article} {kind} (pid {self.pid})."


def spawn_worker(idle_exit: float = WORKER_IDLE_EXIT_S, executor: str = "local") -> int:
    """Start `python -m engine worker` (or the Ray driver) detached from this process. Returns its pid."""
    import os

    for item in list(_SPAWNED):  # reap workers we started that have exited, so no zombie lingers
        if item[1].poll() is not None:
            _SPAWNED.remove(item)
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
    _SPAWNED.append((executor, proc))
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


def _starting(executor: str, registered: set[int]) -> int:
    """Executors of this kind that this process started, still running and not registered yet (they are starting up)."""
    return sum(1 for kind, proc in _SPAWNED if kind == executor and proc.poll() is None and proc.pid not in registered)


def ensure_worker() -> list[Started]:
    """Start the executors that queued steps wait for: a local worker while fewer than max_workers() are alive, the Ray
    driver while none is. Returns what was started (nothing when every queued step has its executor)."""
    wanted = []
    with open_store() as rs:
        rs.recover()
        for executor, limit in (("local", max_workers()), ("ray", 1)):
            queued = rs.queued(executor)
            alive = {w["pid"] for w in rs.alive_workers(executor)}
            if queued and len(alive) + _starting(executor, alive) < limit:
                wanted.append((executor, queued))
    return [Started(executor, spawn_worker(executor=executor), queued) for executor, queued in wanted]
