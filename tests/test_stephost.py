"""The warm step host (engine.runs.stephost) on its own: what a forked step inherits, and the worker's tree kill on a
forked step. Runs through the worker (output in the run log, the step dying with its worker, a step the OS kills) are
in tests/test_jobs.py."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from engine.runs import stephost, worker
from engine.runs.store.liveness import process_alive


@pytest.fixture(scope="module")
def host():
    """The fork server with stephost's preload, as a worker starts it; stopped afterwards."""
    from multiprocessing import forkserver

    ctx = stephost._fork_server()
    if ctx is None:
        pytest.skip("no fork server on this system: steps start as fresh processes")
    forkserver._forkserver._stop()  # one an earlier test of this process started (another cwd, sys.path or environment)
    with pytest.MonkeyPatch.context() as mp:
        # A forked process re-runs its parent's __main__ file when it has one: after a Streamlit AppTest.from_function in
        # this process that is its temporary script, which fails outside AppTest. The worker (python -m engine) has a module.
        mp.delattr(sys.modules["__main__"], "__file__", raising=False)
        yield ctx
    forkserver._forkserver._stop()


def _torch_threads(out: str) -> None:
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    x = torch.randn(300, 300)
    (x @ x).sum().item()  # an operation after the fork: no thread pool inherited in a broken state
    Path(out).write_text(f"{before} {torch.get_num_threads()}")


def test_torch_is_preloaded_and_set_num_threads_applies_in_a_forked_step(host, tmp_path):
    import torch

    proc = host.Process(target=_torch_threads, args=(str(tmp_path / "threads"),))
    proc.start()
    proc.join(120)
    assert proc.exitcode == 0
    before, after = map(int, (tmp_path / "threads").read_text().split())
    assert after == 1 and before == torch.get_num_threads(), "the host ran no torch operation, so a step starts with the default pool"


def test_stop_pools_ends_joblib_s_idle_workers():
    """joblib's loky workers wait 300 s for more work, and a forked step ends through multiprocessing, which joins its
    children without loky's exit hook: a step that ran inner folds in parallel must stop them itself (the default
    comparison's MiniLM → SVC step once sat idle for minutes after its result was stored)."""
    import multiprocessing

    from joblib import Parallel, delayed

    assert sum(Parallel(n_jobs=2)(delayed(abs)(-i) for i in range(4))) == 6  # as GridSearchCV(n_jobs=2) does
    assert [p for p in multiprocessing.active_children() if "Loky" in p.name], "joblib kept no idle workers to stop"
    stephost.stop_pools()
    assert not [p for p in multiprocessing.active_children() if "Loky" in p.name]
    stephost.stop_pools()  # none left: nothing to do, and no pool started to stop


def _parent_of_a_sleeper(pid_file: str) -> None:
    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # a step that does not unwind: the worker's SIGKILL must follow
    child = subprocess.Popen(["sleep", "60"])
    Path(pid_file).write_text(str(child.pid))
    time.sleep(60)


def test_the_worker_kills_a_forked_step_with_its_whole_tree(host, tmp_path):
    pid_file = tmp_path / "child.pid"
    proc = host.Process(target=_parent_of_a_sleeper, args=(str(pid_file),))
    proc.start()
    handle = stephost._Forked(proc)
    deadline = time.monotonic() + 120
    while not pid_file.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    grandchild = int(pid_file.read_text())
    t0 = time.monotonic()
    worker._kill_tree(handle)
    assert time.monotonic() - t0 < worker.CANCEL_GRACE_S
    assert handle.wait() == -signal.SIGKILL and not process_alive(handle.pid)
    psutil.wait_procs([psutil.Process(grandchild)] if process_alive(grandchild) else [], timeout=5)
    assert not process_alive(grandchild), "the step's own child must die with it"


def test_step_host_fresh_or_another_system_starts_steps_afresh(monkeypatch):
    monkeypatch.setenv(stephost.STEP_HOST_ENV, "fresh")
    assert stephost._fork_server() is None and stephost.start() == "a fresh process per step"
    monkeypatch.delenv(stephost.STEP_HOST_ENV)
    monkeypatch.setattr(stephost.sys, "platform", "darwin")
    assert stephost._fork_server() is None
