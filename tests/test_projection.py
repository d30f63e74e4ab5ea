"""UMAP maps of stored embeddings: cached, and refused when the vectors changed."""

from __future__ import annotations

import os
import sys
import threading
import time

import numpy as np
import pytest

from engine.evaluation import results
from engine.features import projection


def test_projection_is_cached_and_checked(cache, two_evals):
    evals, _ = results.list_evaluations()
    key = evals[0].embeddings_key
    assert projection.cached(key) is None
    coords = projection.project(key)
    assert coords.shape == (60, 2) and np.isfinite(coords).all()
    assert np.array_equal(projection.cached(key), coords)
    assert len(list((cache / "projections").glob("*.npy"))) == 1
    npy = cache / "embeddings" / f"{key}.npy"
    arr = np.load(npy)
    arr[0, 0] += 1
    np.save(npy, arr)
    with pytest.raises(Exception, match="does not match"):
        projection.project(key, n_neighbors=5)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="per-thread nice is Linux's")
def test_warm_up_waits_for_running_steps_at_the_lowest_priority(monkeypatch):
    seen, busy = {}, iter([True, True, False])

    def fake_warm_up():
        seen["thread"] = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
        seen["busy_left"] = list(busy)
        return 0.0

    monkeypatch.setattr(projection, "warm_up", fake_warm_up)
    monkeypatch.setattr(projection, "_WARM", {"state": "cold", "seconds": None, "error": None})
    before = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
    projection.start_warm_up(wait_while=lambda: next(busy), delay=0.0)
    for _ in range(1000):
        if projection.warm_state()["state"] == "warm":
            break
        time.sleep(0.01)
    assert projection.warm_state()["state"] == "warm"
    assert seen["busy_left"] == []  # compiled only once nothing was running
    assert seen["thread"] == 19 and os.getpriority(os.PRIO_PROCESS, threading.get_native_id()) == before
