"""Workers' liveness: whether a registered worker's process still runs, and how many workers may run at once.

A worker is registered in the run store by its pid and its process start time (RunStore.register_worker); the two
together tell a live worker from a dead one whose pid the system gave to another process. At most $CLINBENCH_WORKERS
local workers run at once (engine.runs.launch starts them on demand).
"""

from __future__ import annotations

import os

from engine.errors import ClinBenchError

WORKERS_ENV = "CLINBENCH_WORKERS"


def process_alive(pid: int | None, create_time: float | None = None) -> bool:
    """True if `pid` runs (not a zombie) and, when given, started at `create_time` (so a reused pid does not count)."""
    import psutil

    if not pid:
        return False
    try:
        proc = psutil.Process(int(pid))
        if proc.status() == psutil.STATUS_ZOMBIE:
            return False
        return create_time is None or abs(proc.create_time() - create_time) < 0.05
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return False


def max_workers() -> int:
    """How many workers may run at once: $CLINBENCH_WORKERS, default 1 (a CPU is best used by one job at a time)."""
    raw = os.environ.get(WORKERS_ENV, "1")
    try:
        n = int(raw)
    except ValueError:
        raise ClinBenchError(f"{WORKERS_ENV}={raw!r} is not a whole number; set it to 1 or more.") from None
    if n < 1:
        raise ClinBenchError(f"{WORKERS_ENV}={n}: set it to 1 or more.")
    return n
