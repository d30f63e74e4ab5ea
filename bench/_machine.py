"""Shared by the benchmarks: measuring on a machine other processes may be using."""

from __future__ import annotations

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
