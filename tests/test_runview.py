"""The one view of a run: derived status, progress fraction, the one-line summary the CLI and the Runs page print,
and the JSON keys outside scripts read."""

from __future__ import annotations

import json
import time

from engine.runs.view import RunView, fmt_duration


def _step(idx, status, **kw):
    row = {"idx": idx, "title": f"m · step {idx}", "model": "m", "method": "svc", "status": status, "done": 0, "total": 0, "stage": "",
           "rate": None, "eta_s": None, "error": None, "result": None, "started": None, "finished": None, "attempts": 0,
           "worker_pid": None, "step_pid": None, "node": None}  # fmt: skip
    row.update(kw)
    return row


def _run(steps, metrics=None):
    run = {
        "id": 7,
        "name": "r",
        "created": time.time() - 60,
        "cancel_requested": None,
        "spec": json.dumps({"models": ["m"]}),
        "data_hash": "h",
        "executor": "local",
    }
    return RunView.from_rows(run, steps, "/log", metrics)


def test_summary_lines_and_progress():
    result = json.dumps({"artifact": "/c/evaluations/abcdef123", "macro_f1": 0.8123, "macro_f1_ci": [0.7, 0.9], "cache_hit": True})
    now = time.time()
    run = _run(
        [
            _step(0, "done", result=result, started=now - 30, finished=now - 10, done=5, total=5),
            _step(1, "running", stage="training epoch 1/4", done=30, total=120, rate=2.5, eta_s=75.0, started=now - 5, worker_pid=11),
            _step(2, "queued"),
        ],
        {1: {"train_loss": [[5, 1.2], [10, 0.9]]}},
    )
    assert run.status == "running" and run.worker_pid == 11 and run.fraction == (1 + 0.25 + 0) / 3
    done, running, queued = run.steps
    assert done.detail == "macro-F1 0.812 (95% CI 0.700–0.900) · cached"
    assert running.detail == "training epoch 1/4 30/120 · 2.5/s · ETA 1 min 15 s"
    assert queued.detail == "waits for a worker" and running.metrics == {"train_loss": [[5, 1.2], [10, 0.9]]}
    assert run.artifacts == {"abcdef123"}


def test_json_keys_outside_scripts_read():
    d = _run([_step(0, "failed", error="boom")]).to_dict()
    assert {"id", "name", "status", "created", "started", "finished", "cancel_requested", "worker_pid", "counts", "n_steps", "steps", "log",
            "spec", "data_hash", "executor"} <= set(d)  # fmt: skip
    assert d["status"] == "failed" and d["counts"]["failed"] == 1 and json.loads(json.dumps(d)) == d
    assert {
        "index",
        "title",
        "model",
        "method",
        "status",
        "progress",
        "error",
        "result",
        "seconds",
        "attempts",
        "worker_pid",
        "node",
        "metrics",
    } <= set(d["steps"][0])


def test_durations():
    assert [fmt_duration(s) for s in (None, 4.4, 75, 3725)] == ["", "4 s", "1 min 15 s", "1 h 02 min"]
