"""Background runs with real processes: the CLI submits, a worker process executes, the store records.

Every test gets its own cache folder (so its own run store and workers); workers still
alive at the end are stopped. Tiny random models keep each step to seconds;
CLINBENCH_BATCH_DELAY_S slows extraction down so a test can cancel or kill mid-step.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from engine.errors import ClinBenchError
from engine.runs import experiment, jobs, launch
from engine.runs.states import Status
from engine.runs.store.liveness import process_alive
from tests import conftest
from tests.conftest import ROOT, stop_workers

OPTS = {"max_length": 64, "grid": False, "n_boot": 100}


@pytest.fixture
def store(tmp_path, monkeypatch):
    """A fresh cache folder for this test; afterwards every worker registered in it is stopped."""
    cache = tmp_path / "cache"
    cache.mkdir()
    monkeypatch.setenv("CLINBENCH_CACHE", str(cache))
    monkeypatch.delenv("CLINBENCH_BATCH_DELAY_S", raising=False)
    yield cache
    stop_workers(cache)


cli = functools.partial(conftest.cli, timeout=120)


def write_spec(path: Path, csv: Path, models: list[str], methods: list[str], reference: bool = False, **options) -> Path:
    """A spec file; without the tf-idf reference step unless asked (these tests are about the run machinery)."""
    path.write_text(
        json.dumps(
            {
                "name": path.stem,
                "reference": reference,
                "data": {"path": str(csv), "text_column": "letter", "label_column": "specialty"},
                "models": models,
                "methods": methods,
                "options": {**OPTS, **options},
            }
        )
    )
    return path


def show(run_id: int) -> dict:
    out = cli("runs", "show", str(run_id), "--json")
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def wait_for(predicate, timeout: float = 120, every: float = 0.1, run_id: int | None = None):
    """Poll `predicate(run)` (the run read in-process) until it returns something truthy."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        run = jobs.get_run(run_id).to_dict()  # the JSON of `runs show --json`
        got = predicate(run)
        if got:
            return got
        time.sleep(every)
    raise AssertionError(
        f"timed out; run is {json.dumps(jobs.get_run(run_id).to_dict(), indent=1)[:3000]}\nlog:\n{jobs.read_log(run_id)[-3000:]}"
    )


def finished(run: dict):
    return run if Status(run["status"]).final else None


def submit(spec: Path, env_extra: dict | None = None) -> int:
    out = cli("submit", str(spec), env_extra=env_extra)
    assert out.returncode == 0, out.stderr
    return int(out.stdout.strip().splitlines()[-1])  # the run id alone on the last line


def leftovers(cache: Path) -> list[str]:
    """Temporary or half-written files anywhere in the cache (atomic writes use .NAME.*.tmp)."""
    return [str(p) for p in cache.rglob("*") if ".tmp" in p.name]


def test_submit_worker_done_with_artifacts(store, tiny_encoder, small_csv, tmp_path):
    spec = write_spec(tmp_path / "two.json", small_csv, [str(tiny_encoder)], ["svc", "logreg"], reference=True)
    run_id = submit(spec)
    run = wait_for(finished, run_id=run_id)
    assert run["status"] == "done", run
    assert [(s["method"], s["status"]) for s in run["steps"]] == [("svc", "done"), ("logreg", "done"), ("tfidf", "done")]
    for s in run["steps"]:
        manifest = json.loads((Path(s["result"]["artifact"]) / "manifest.json").read_text())
        assert manifest["producer"] == "clinbench" and manifest["method"] == s["method"]
        assert s["result"]["macro_f1"] == manifest["metrics"]["macro_f1"]
        assert s["progress"]["done"] == s["progress"]["total"] > 0 and s["started"] and s["finished"] >= s["started"]
    # the second step reused the first step's embeddings: no forward pass in its process
    assert run["steps"][0]["result"]["forward_passes"] > 0 and run["steps"][1]["result"]["forward_passes"] == 0
    listed = json.loads(cli("runs", "--json").stdout)
    assert [r["id"] for r in listed] == [run_id] and listed[0]["status"] == "done"
    log = cli("runs", "logs", str(run_id)).stdout
    assert "step 1/3 started" in log and "step 3/3 done: macro-F1" in log
    table = cli("runs").stdout
    assert f"{run_id:4d}  done" in table and "3/3" in table


def test_cancel_during_extraction_stops_within_5s_and_keeps_nothing(store, tiny_encoder, small_csv, tmp_path):
    spec = write_spec(tmp_path / "slow.json", small_csv, [str(tiny_encoder)], ["svc"], batch_tokens=64)
    run_id = submit(spec, env_extra={"CLINBENCH_BATCH_DELAY_S": "0.2"})
    run = wait_for(
        lambda r: r if r["steps"][0]["progress"]["stage"] == "embedding" and r["steps"][0]["progress"]["done"] > 0 else None, run_id=run_id
    )
    shown = show(run_id)  # the CLI's JSON while it runs: the worker's pid is there and alive
    assert shown["status"] == "running" and process_alive(shown["worker_pid"])
    assert shown["steps"][0]["progress"]["total"] == 60
    t0 = time.monotonic()
    out = cli("runs", "cancel", str(run_id))
    assert out.returncode == 0 and "cancel requested" in out.stdout
    run = wait_for(finished, timeout=10, every=0.05, run_id=run_id)
    elapsed = time.monotonic() - t0
    assert run["status"] == "cancelled" and elapsed < 5.0, (run, elapsed)
    assert "cancelled" in run["steps"][0]["error"].lower()
    assert not list((store / "embeddings").glob("*.npy")), "a cancelled extraction must not store vectors"
    assert not (store / "evaluations").exists() or not any((store / "evaluations").iterdir())
    assert leftovers(store) == []


def test_cancel_terminates_a_step_that_does_not_stop(store, tiny_encoder, small_csv, tmp_path):
    # one batch takes 60 s and the stop flag is only read between batches: the worker must terminate the step's process
    spec = write_spec(tmp_path / "stuck.json", small_csv, [str(tiny_encoder)], ["svc"], batch_tokens=64)
    run_id = submit(spec, env_extra={"CLINBENCH_BATCH_DELAY_S": "60"})
    run = wait_for(lambda r: r if r["steps"][0]["progress"]["done"] > 0 else None, run_id=run_id)
    step_pid = run["steps"][0]["step_pid"]
    assert process_alive(step_pid)
    t0 = time.monotonic()
    jobs.cancel(run_id)
    run = wait_for(finished, timeout=10, every=0.05, run_id=run_id)
    assert run["status"] == "cancelled" and time.monotonic() - t0 < 5.0
    assert "terminated" in run["steps"][0]["error"]
    assert not process_alive(step_pid)
    assert not list((store / "embeddings").glob("*.npy")) and leftovers(store) == []


def _stuck_step(store, tiny_encoder, small_csv, tmp_path, reference: bool = False) -> tuple[int, dict]:
    """A run whose first step sleeps 60 s after its first batch (it reads no stop flag meanwhile); the run once it has."""
    spec = write_spec(tmp_path / "stuck.json", small_csv, [str(tiny_encoder)], ["svc"], reference=reference, batch_tokens=64)
    run_id = submit(spec, env_extra={"CLINBENCH_BATCH_DELAY_S": "60"})
    return run_id, wait_for(lambda r: r if r["steps"][0]["progress"]["done"] > 0 else None, run_id=run_id)


def test_a_step_is_forked_from_the_warm_host_with_its_output_in_the_run_log(store, tiny_encoder, small_csv, tmp_path):
    """Issue 31: steps start from a process that has already imported torch, transformers and scikit-learn (the fork
    server the worker starts), not as a fresh interpreter; fds 1 and 2 are the run's log, fd 0 reads nothing."""
    from engine.runs.store import database

    run_id, run = _stuck_step(store, tiny_encoder, small_csv, tmp_path)
    step = psutil.Process(run["steps"][0]["step_pid"])
    host = step.parent()
    assert host.pid != run["worker_pid"] and host.ppid() == run["worker_pid"], (host.cmdline(), run["worker_pid"])
    assert "multiprocessing.forkserver" in " ".join(host.cmdline()) and "--step" not in step.cmdline()
    fds = {n: os.readlink(f"/proc/{step.pid}/fd/{n}") for n in (0, 1, 2)}
    assert fds == {0: os.devnull, 1: str(database.log_path(run_id)), 2: str(database.log_path(run_id))}
    assert "steps run in a fork of a process that has imported torch" in (store / "runs" / "worker.log").read_text()
    jobs.cancel(run_id)
    assert wait_for(finished, timeout=10, run_id=run_id)["status"] == "cancelled"


def test_killing_the_worker_kills_a_forked_step_that_never_checks_for_stop(store, tiny_encoder, small_csv, tmp_path):
    """The step sleeps in a batch and reads no stop flag, and its parent is the fork server, not the worker: it must still
    die at once (it waits for the worker's exit on a pidfd). No orphan: the fork server leaves too."""
    run_id, run = _stuck_step(store, tiny_encoder, small_csv, tmp_path)
    step = psutil.Process(run["steps"][0]["step_pid"])
    host = step.parent()
    os.kill(run["worker_pid"], signal.SIGKILL)
    deadline = time.monotonic() + 5
    while process_alive(step.pid) and time.monotonic() < deadline:  # dead: gone, or a zombie its host has not reaped yet
        time.sleep(0.05)
    assert not process_alive(step.pid), "the step's process must die with its worker"
    _gone, alive = psutil.wait_procs([host], timeout=60)  # the host leaves too (unloading torch takes it a few seconds)
    assert not alive, "the warm host outlived its worker"
    assert show(run_id)["steps"][0]["status"] == "interrupted"


def test_a_step_the_os_kills_is_failed_with_the_reason_and_the_next_step_runs(store, tiny_encoder, small_csv, tmp_path):
    run_id, run = _stuck_step(store, tiny_encoder, small_csv, tmp_path, reference=True)
    os.kill(run["steps"][0]["step_pid"], signal.SIGKILL)  # as the kernel's out-of-memory killer does
    worker_pid, run = run["worker_pid"], wait_for(finished, run_id=run_id)
    killed, reference = run["steps"]
    assert killed["status"] == "failed" and "killed (SIGKILL)" in killed["error"] and "out of memory" in killed["error"], killed
    assert reference["status"] == "done" and process_alive(worker_pid), "the worker goes on with the next step"
    assert leftovers(store) == []


def test_with_step_host_fresh_a_step_is_a_new_interpreter(store, small_csv, tmp_path):
    """CLINBENCH_STEP_HOST=fresh (what bench/default_comparison.py --step-host fresh compares against): the step is
    `python -m engine worker --step RUN:IDX`, as on a system without the fork server."""
    spec = write_spec(tmp_path / "fresh.json", small_csv, ["tfidf"], ["tfidf"])
    run = wait_for(finished, run_id=submit(spec, env_extra={"CLINBENCH_STEP_HOST": "fresh"}))
    assert run["status"] == "done", jobs.read_log(run["id"])
    assert "steps run in a fresh process per step" in (store / "runs" / "worker.log").read_text()


def test_kill_9_worker_then_resume_recomputes_only_unfinished_steps(store, tiny_encoder, tiny_decoder, small_csv, tmp_path):
    spec = write_spec(tmp_path / "crash.json", small_csv, [str(tiny_encoder), str(tiny_decoder)], ["logreg"], batch_tokens=64)
    run_id = submit(spec, env_extra={"CLINBENCH_BATCH_DELAY_S": "0.1"})
    run = wait_for(
        lambda r: r if r["steps"][1]["status"] == "running" and r["steps"][1]["progress"]["done"] > 0 else None, run_id=run_id, timeout=180
    )
    first = run["steps"][0]
    assert first["status"] == "done"
    worker_pid, step_pid = run["worker_pid"], run["steps"][1]["step_pid"]
    os.kill(worker_pid, signal.SIGKILL)  # like a crash or a power cut: nothing gets to clean up
    with contextlib.suppress(psutil.NoSuchProcess):
        psutil.wait_procs([psutil.Process(step_pid)], timeout=5)
    assert not process_alive(step_pid), "the step's process must die with its worker"

    run = show(run_id)
    assert run["status"] == "interrupted" and [s["status"] for s in run["steps"]] == ["done", "interrupted"]
    assert str(worker_pid) in run["steps"][1]["error"] and run["worker_pid"] is None
    assert not list((store / "evaluations").glob(".*tmp"))

    out = cli("runs", "resume", str(run_id), env_extra={"CLINBENCH_BATCH_DELAY_S": "0"})
    assert out.returncode == 0 and "1 step(s) queued again" in out.stdout
    run = wait_for(finished, run_id=run_id)
    assert run["status"] == "done"
    again = run["steps"][0]
    assert again["attempts"] == 1 and again["finished"] == first["finished"] and again["result"] == first["result"], (
        "a finished step must not run again"
    )
    assert run["steps"][1]["attempts"] == 2 and run["steps"][1]["result"]["forward_passes"] > 0
    assert leftovers(store) == []

    # the same spec again: every step is a cache hit and no forward pass runs
    rerun = wait_for(finished, run_id=submit(spec))
    assert rerun["status"] == "done"
    assert all(s["result"]["cache_hit"] and s["result"]["forward_passes"] == 0 for s in rerun["steps"])


def test_listing_runs_starts_a_worker_for_steps_a_killed_worker_left_queued(store, tiny_encoder, small_csv, tmp_path):
    """Issue 29, item 8: after the worker is killed, another run's queued step does not wait for the next submission:
    `runs show` (and `runs`) start a worker and say so."""
    slow = write_spec(tmp_path / "slow.json", small_csv, [str(tiny_encoder)], ["svc"], batch_tokens=64)
    first = submit(slow, env_extra={"CLINBENCH_BATCH_DELAY_S": "0.2"})
    run = wait_for(lambda r: r if r["steps"][0]["progress"]["done"] > 0 else None, run_id=first)
    second = submit(write_spec(tmp_path / "next.json", small_csv, ["tfidf"], ["tfidf"]))  # queued behind the first
    os.kill(run["worker_pid"], signal.SIGKILL)
    with contextlib.suppress(psutil.NoSuchProcess):
        psutil.wait_procs([psutil.Process(run["worker_pid"])], timeout=5)
    assert jobs.workers() == [] and jobs.get_run(second).status == Status.QUEUED

    out = cli("runs", "show", str(second), "--json")
    assert out.returncode == 0 and json.loads(out.stdout)["id"] == second  # the JSON on stdout, the notice on stderr
    assert "1 step(s) were queued with no worker running: started a worker (pid " in out.stderr, out.stderr
    (worker,) = wait_for(lambda _r: jobs.workers(), run_id=second, timeout=60)
    assert f"(pid {worker['pid']})" in out.stderr
    out = cli("runs")
    assert out.returncode == 0 and "started" not in out.stderr  # a worker runs: nothing to start
    assert wait_for(finished, run_id=second)["status"] == "done" and show(first)["status"] == "interrupted"


def test_a_training_step_writes_its_curves_to_the_store_while_it_runs(store, tiny_encoder, small_csv, tmp_path):
    """The worker's StepContext puts log_metric points into the run store: `runs show --json` has them while the step
    trains, and the finished step keeps them (the artifact's manifest holds the same log)."""
    spec = write_spec(
        tmp_path / "probe.json",
        small_csv,
        [str(tiny_encoder)],
        ["linear-probe"],
        epochs=6,
        patience=6,
        batch_size=4,
        max_length=32,
        protocol="holdout",  # one training, whose curves carry the plain names (under cv: one set per fold)
    )
    run_id = submit(spec)
    live = wait_for(
        lambda r: r if r["steps"][0]["status"] == "running" and r["steps"][0]["metrics"].get("val_macro_f1") else None,
        run_id=run_id,
        every=0.05,
    )
    assert live["steps"][0]["metrics"]["train_loss"], "the loss curve is there before the step ends"
    run = show(wait_for(finished, run_id=run_id)["id"])
    step = run["steps"][0]
    assert run["status"] == "done" and len(step["metrics"]["val_macro_f1"]) == 6
    manifest = json.loads((Path(step["result"]["artifact"]) / "manifest.json").read_text())
    assert manifest["training"]["log"] == step["metrics"]


def test_failing_step_is_recorded_and_the_next_step_runs(store, tiny_encoder, small_csv, tmp_path):
    from tests.test_cli import broken_tokenizer  # passes submit's checks, fails when its step loads it

    spec = write_spec(tmp_path / "fail.json", small_csv, [broken_tokenizer(tiny_encoder, tmp_path), str(tiny_encoder)], ["logreg"])
    out = cli("run", str(spec), "--json", str(tmp_path / "r.json"))  # `run` queues and follows until the end
    assert out.returncode == 1, out.stderr
    assert "FAILED" in out.stdout and "run 1: failed" in out.stdout
    run = show(1)
    failed, ok = run["steps"]
    assert failed["status"] == "failed" and "broken-tokenizer" in failed["error"] and "\n" not in failed["error"]
    assert ok["status"] == "done" and ok["result"]["macro_f1"] > 0
    assert "Traceback" in cli("runs", "logs", "1").stdout  # the traceback goes to the log, not to the user's message
    results = json.loads((tmp_path / "r.json").read_text())
    assert results[0]["status"] == "failed" and "macro_f1" in results[1]


def test_two_processes_submitting_at_once(store, tiny_encoder, small_csv, tmp_path):
    spec_a = write_spec(tmp_path / "a.json", small_csv, [str(tiny_encoder)], ["svc"])
    spec_b = write_spec(tmp_path / "b.json", small_csv, [str(tiny_encoder)], ["logreg"])
    procs = [
        subprocess.Popen([sys.executable, "-m", "engine", "submit", str(s)], cwd=ROOT, stdout=subprocess.PIPE, text=True)
        for s in (spec_a, spec_b)
    ]
    ids = sorted(int(p.communicate(timeout=120)[0].strip().splitlines()[-1]) for p in procs)
    assert ids == [1, 2]
    for run_id in ids:
        assert wait_for(finished, run_id=run_id)["status"] == "done"
    with sqlite3.connect(store / "runs" / "runs.sqlite") as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert conn.execute("SELECT COUNT(*), SUM(status = 'done'), SUM(attempts) FROM steps").fetchone() == (2, 2, 2)
    assert len(jobs.workers()) <= 1  # the default cap: one worker at a time


def test_store_actions_and_clear_errors(store, small_csv, tmp_path, tiny_encoder):
    spec = experiment.parse_spec(
        {
            "data": {"path": str(small_csv), "text_column": "letter", "label_column": "specialty"},
            "models": [str(tiny_encoder)],
            "methods": ["svc", "logreg"],
            "options": OPTS,
        }
    )
    run_id = jobs.submit(spec, start_worker=False)
    assert jobs.get_run(run_id).status == Status.QUEUED
    with pytest.raises(ClinBenchError, match="cancel it first"):
        jobs.delete(run_id)
    run = jobs.cancel(run_id)
    assert run.status == Status.CANCELLED and {s.status for s in run.steps} == {Status.CANCELLED}
    run = jobs.resume(run_id, start_worker=False)
    assert [s.status for s in run.steps] == ["queued"] * 3 and not run.cancel_requested  # svc, logreg, the tf-idf reference
    jobs.cancel(run_id)
    jobs.delete(run_id)
    assert jobs.list_runs() == []

    out = cli("runs", "show", "42")
    assert out.returncode == 2 and "There is no run 42" in out.stderr
    bad = write_spec(tmp_path / "bad.json", small_csv, [str(tiny_encoder)], ["svc"])
    bad.write_text(bad.read_text().replace('"letter"', '"body"'))
    out = cli("submit", str(bad))
    assert out.returncode == 2 and "'body' not found" in out.stderr
    assert jobs.list_runs() == [], "a rejected spec queues nothing"
    out = cli("submit", str(write_spec(tmp_path / "m.json", small_csv, ["no-such-model"], ["svc"])))
    assert out.returncode == 2 and "Unknown model 'no-such-model'" in out.stderr


def test_newer_schema_is_refused(store):
    jobs.list_runs()
    with sqlite3.connect(store / "runs" / "runs.sqlite") as conn:
        conn.execute("PRAGMA user_version = 99")
    with pytest.raises(ClinBenchError, match="newer ClinBench"):
        jobs.list_runs()


def test_data_changed_after_submission_fails_the_step(store, tiny_encoder, small_csv, tmp_path):
    spec = experiment.parse_spec(
        {
            "data": {"path": str(small_csv), "text_column": "letter", "label_column": "specialty"},
            "models": [str(tiny_encoder)],
            "methods": ["svc"],
            "options": OPTS,
        }
    )
    run_id = jobs.submit(spec, start_worker=False)
    small_csv.write_text(small_csv.read_text().replace("patient", "person"))
    launch.ensure_worker()
    run = wait_for(finished, run_id=run_id)
    assert run["status"] == "failed" and "changed after this run was submitted" in run["steps"][0]["error"]


def test_progress_is_throttled_but_a_stage_s_first_step_forward_is_written_at_once(monkeypatch):
    """A slow first batch (a large model, a busy machine) shows as soon as it is done, not one batch later; after it,
    at most one write per PROGRESS_EVERY_S, and the stage's end always."""
    from engine.runs import stepcall

    now = [100.0]
    monkeypatch.setattr(stepcall.time, "monotonic", lambda: now[0])
    written = []
    rate = stepcall.Rate(lambda done, total, stage, r, eta: written.append((stage, done)))
    for done, t in [(0, 0.0), (4, 0.01), (8, 0.02), (12, 0.6), (16, 0.61), (20, 0.62)]:
        now[0] = 100.0 + t
        rate(done, 20, "embedding")
    rate(0, 3, "training")
    rate(1, 3, "training")
    assert written == [("embedding", 0), ("embedding", 4), ("embedding", 12), ("embedding", 20), ("training", 0), ("training", 1)]
