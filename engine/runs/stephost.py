"""A local step's process: where it comes from, and what it runs.

The worker starts each step in a process of its own (one process per step: a step the OS kills becomes `failed`, a
step that ignores a cancel is terminated with its tree, a large model's memory goes back to the system when the step
ends). Starting Python afresh for each step would import torch, transformers and scikit-learn again every time
(seconds per step), so on Linux the worker keeps a warm host: multiprocessing's fork server, started by `start()` when
the worker starts (its imports overlap the worker's first claim), preloads those modules and forks each step from
them. Elsewhere, or with CLINBENCH_STEP_HOST=fresh, a step is a fresh `python -m engine worker --step RUN:IDX`.

`spawn(run_id, idx, worker_pid, log_path)` starts a step's process either way and returns a handle with `pid`,
`poll()` and `wait()` (the exit status, or minus the signal that killed it, as subprocess.Popen gives). Either way
the process:
* dies with its worker. A fresh step: PR_SET_PDEATHSIG (its parent is the worker). A forked step's parent is the fork
  server, so it waits for the worker's exit on a pidfd (a thread that SIGKILLs the step), and PR_SET_PDEATHSIG ties
  it to the fork server, which reports its end to the worker and leaves when the worker does (the step gives up its
  copy of the server's "alive" pipe). The stop callback also checks both (`_StopCheck`);
* writes its stdout and stderr to the run's log, reads nothing, and runs in the repository root;
* runs `execute_child`: loads the spec and letters, executes the step (engine.runs.stepcall) and records its outcome.
"""

from __future__ import annotations

import functools
import os
import select
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from engine.cache.context import StepContext
from engine.options.config import REPO_ROOT
from engine.runs import stepcall
from engine.runs.store import database
from engine.runs.store.liveness import max_workers, process_alive
from engine.runs.store.runstore import RunStore, open_store

STEP_HOST_ENV = "CLINBENCH_STEP_HOST"  # "fresh": a new interpreter per step (the benchmark's comparison); else forked
STOP_CHECK_EVERY_S = 0.25
# What a step imports (seconds of start-up each time otherwise). Importing them starts no torch thread pool, so forking
# after them is safe; nothing here may run a torch operation.
PRELOAD = [
    "torch",
    "transformers",
    "transformers.modeling_utils",
    "sklearn",
    "skops.io",
    "pandas",
    "engine.runs.stephost",
    "engine.runs.experiment",
    "engine.features.extract",
    "engine.cache.artifacts",
    "engine.data.dataset",
]


# --- starting a step's process (in the worker) ------------------------------------


_failed = ""  # why the fork server failed in this worker, if it did: its steps start afresh from then on


def _fork_server():
    """multiprocessing's fork-server context (preloading PRELOAD), or None where a step starts as a fresh interpreter."""
    import multiprocessing

    if _failed or os.environ.get(STEP_HOST_ENV) == "fresh" or not sys.platform.startswith("linux"):
        return None
    try:
        ctx = multiprocessing.get_context("forkserver")
    except ValueError:
        return None
    ctx.set_forkserver_preload(PRELOAD)
    return ctx


def start() -> str:
    """Start the warm host now, so that its imports overlap the worker's first claim; which host steps will use."""
    ctx = _fork_server()
    if ctx is None:
        return "a fresh process per step"
    from multiprocessing import forkserver

    global _failed
    try:
        forkserver.ensure_running()
    except OSError as exc:
        _failed = str(exc)
        return f"a fresh process per step (the fork server did not start: {exc})"
    return "a fork of a process that has imported torch, transformers and scikit-learn"


class _Forked:
    """A step forked by the fork server, with the part of subprocess.Popen's interface the worker uses."""

    def __init__(self, proc):
        self.proc = proc

    @property
    def pid(self) -> int:
        return self.proc.pid

    def poll(self) -> int | None:
        return self.proc.exitcode

    def wait(self) -> int:
        self.proc.join()
        return self.proc.exitcode


def spawn(run_id: int, idx: int, worker_pid: int, log_path: Path):
    """Start step `idx` of run `run_id`, claimed by `worker_pid`, in a process of its own; its handle."""
    global _failed
    ctx = _fork_server()
    if ctx is not None:
        proc = ctx.Process(target=_forked_step, args=(run_id, idx, worker_pid, str(log_path)), name=f"step {run_id}:{idx}")
        try:
            proc.start()
            return _Forked(proc)
        except (OSError, EOFError) as exc:  # the server could not fork: this step, and the next, start afresh
            _failed = str(exc) or type(exc).__name__
            database.append_log(run_id, f"the warm step host failed ({_failed}); steps start as fresh processes")
    with open(log_path, "ab") as log:
        return subprocess.Popen(
            [sys.executable, "-m", "engine", "worker", "--step", f"{run_id}:{idx}"],
            cwd=REPO_ROOT,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            preexec_fn=_die_with_parent,
        )


def _die_with_parent() -> None:  # in the step's process before it does anything else (a fresh one: before exec)
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass  # not Linux: the step's stop callback still notices a dead worker


def _die_with(worker_pid: int) -> None:
    """SIGKILL this process as soon as the worker `worker_pid` exits (a thread waiting on a pidfd: the kernel says when)."""
    try:
        fd = os.pidfd_open(worker_pid)
    except (AttributeError, OSError):
        fd = None  # no pidfd (Linux before 5.3): the fork server's exit reaches us through PR_SET_PDEATHSIG, later
    if not process_alive(worker_pid):  # gone already
        os.kill(os.getpid(), signal.SIGKILL)
    if fd is not None:
        threading.Thread(target=_kill_self_when_ready, args=(fd,), name="dies with its worker", daemon=True).start()


def _kill_self_when_ready(pidfd: int) -> None:
    waiting = select.poll()
    waiting.register(pidfd, select.POLLIN)  # readable once the process has exited
    while not waiting.poll():
        pass
    os.kill(os.getpid(), signal.SIGKILL)


def _forked_step(run_id: int, idx: int, worker_pid: int, log_path: str) -> None:
    """The forked step's process: tie its life to the worker's, send its output to the run log, execute the step."""
    from multiprocessing import forkserver

    _die_with_parent()  # the fork server: without it nothing would tell the worker that this step ended
    _die_with(worker_pid)
    server = forkserver._forkserver  # give up our copy of the server's "alive" pipe: the server then leaves with the worker
    if getattr(server, "_forkserver_alive_fd", None) is not None:
        os.close(server._forkserver_alive_fd)
        server._forkserver_alive_fd = None
    fd = os.open(log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)
    os.chdir(REPO_ROOT)
    try:
        code = execute_child(run_id, idx, worker_pid)
    finally:
        stop_pools()
    sys.exit(code)


def stop_pools() -> None:
    """Stop joblib's process pool (loky's reusable executor: the parallel inner folds of engine.methods.estimators), if
    this process started one. A fresh interpreter does this as it exits; a forked step leaves through multiprocessing,
    which waits for its child processes without that, and loky's idle workers would hold the step (and the worker's
    next step) for their idle timeout of 300 s."""
    loky = sys.modules.get("joblib.externals.loky.reusable_executor")
    executor = getattr(loky, "_executor", None)  # (get_reusable_executor() would start one where there is none)
    if executor is not None:
        executor.shutdown(wait=True)


# --- the step's process --------------------------------------------------------------


class _StopCheck:
    """should_stop(): True once the run is cancelled, or the worker that started us or our parent is gone."""

    def __init__(self, rs: RunStore, run_id: int, worker: int):
        self.rs, self.run_id, self.worker, self.parent = rs, run_id, worker, os.getppid()
        self.t_check, self.stop = 0.0, False

    def __call__(self) -> bool:
        now = time.monotonic()
        if self.stop or now - self.t_check < STOP_CHECK_EVERY_S:
            return self.stop
        self.t_check = now
        gone = os.getppid() != self.parent or not process_alive(self.worker)
        self.stop = gone or self.rs.cancel_requested(self.run_id) is not None
        return self.stop


class _Terminated(BaseException):
    """Raised in a step's process on SIGTERM; a BaseException so that no `except Exception` swallows it."""


def _terminated(_signum, _frame) -> None:
    raise _Terminated()


def execute_child(run_id: int, idx: int, worker_pid: int | None = None) -> int:
    """Execute one step claimed by `worker_pid` (default: the parent, as for `python -m engine worker --step RUN:IDX`)
    and record its outcome; the exit status."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C in the worker's terminal is the worker's to handle
    signal.signal(signal.SIGTERM, _terminated)  # unwind (temporary files are removed) before the worker's SIGKILL follows
    database.exit_on_change(lambda msg: print(msg, flush=True))
    worker = worker_pid or os.getppid()
    with open_store() as rs:
        claimed = rs.claimed_by(run_id, idx, worker)
        if claimed is None:
            print(f"step {run_id}:{idx} is not running under this worker; nothing to do", flush=True)
            return 1
        if max_workers() > 1:
            import torch

            torch.set_num_threads(max(1, (os.cpu_count() or 1) // max_workers()))
        ctx = StepContext(
            stepcall.Rate(functools.partial(rs.write_progress, run_id, idx)),
            _StopCheck(rs, run_id, worker),
            functools.partial(rs.write_metric, run_id, idx),
        )
        spec_json, data_hash = claimed
        try:
            outcome = stepcall.call(spec_json, data_hash, idx, ctx, where=f"run {run_id}")
        except _Terminated:
            print(f"step {run_id}:{idx} terminated by its worker", flush=True)
            return 143  # the worker records the outcome
        stepcall.record(rs, run_id, idx, outcome, worker)
        sys.stdout.flush()
    return 0
