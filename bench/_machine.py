"""Shared by the benchmarks: measuring on a machine other processes may be using."""

from __future__ import annotations

import contextlib
import os
import time
from pathlib import Path


def cpu_snapshot() -> tuple[float, float]:
    """(busy CPU seconds of the whole machine, CPU seconds of this process)."""
    with open("/proc/stat") as fh:
        v = [int(x) for x in fh.readline().split()[1:]]
    tick = os.sysconf("SC_CLK_TCK")
    busy = (sum(v[:8]) - v[3] - v[4]) / tick  # all but idle and iowait
    t = os.times()
    return busy, t.user + t.system


def wait_quiet(max_wait: float = 60.0, threshold: float = 0.9) -> None:
    """Wait (up to max_wait s) until the machine is at least `threshold` idle."""
    if not Path("/proc/stat").exists():
        return
    deadline = time.time() + max_wait
    while time.time() < deadline:
        b0, s0 = cpu_snapshot()
        time.sleep(0.3)
        b1, s1 = cpu_snapshot()
        if (b1 - b0) - (s1 - s0) < (1 - threshold) * 0.3 * os.cpu_count():
            return


def progress_context(t0: float, every_s: float = 20.0, loss_every: int = 10):
    """A step context for a long bench row: progress (each new stage, and at most every `every_s` seconds) and curve points
    (every validation point, every `loss_every`-th training loss) printed to stderr with the seconds since `t0`."""
    import sys

    from engine.cache.context import StepContext

    last = {"t": 0.0, "unit": ""}

    def progress(done, total, unit):
        now = time.perf_counter()
        if unit != last["unit"] or now - last["t"] > every_s:
            last.update(t=now, unit=unit)
            print(f"  [{now - t0:7.0f} s] {unit} {done}/{total}", file=sys.stderr, flush=True)

    def log_metric(name, value, step):
        if not name.startswith("train_loss") or step % loss_every == 0:
            print(f"  [{time.perf_counter() - t0:7.0f} s] {name} @ {step}: {value:.4f}", file=sys.stderr, flush=True)

    return StepContext(progress=progress, log_metric=log_metric)


@contextlib.contextmanager
def fresh_cache(name: str):
    """A new, empty ClinBench cache for one benchmark (CLINBENCH_CACHE), deleted afterwards: nothing is a cache hit."""
    import shutil
    import tempfile

    folder = tempfile.mkdtemp(prefix=f"clinbench-bench-{name}-")
    os.environ["CLINBENCH_CACHE"] = folder
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)
