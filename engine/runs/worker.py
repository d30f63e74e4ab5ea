"""Worker processes: take queued steps from the run store and execute each in a child process.

`python -m engine worker` registers itself in the store (at most max_workers() at once; an
extra one leaves at once), then takes queued steps in submission order (run id, then step
index). Each step runs in a fresh child process (`python -m engine worker --step RUN:IDX`)
that loads the spec and the letters, checks the letters' hash against the one recorded at
submission, calls `experiment.execute` with a StepContext backed by the store, and writes
the step's outcome in one transaction: done (with a result summary), failed (a one-line
message; the traceback goes to the run log) or cancelled. Progress goes to the store at most
twice a second, metrics (training curves) as they are logged; the cancel flag is read at most
four times a second, at batch boundaries.

Why a child per step:
* a step that does not stop at a batch boundary within CANCEL_GRACE_S of a cancel is
  terminated with its process tree while the worker lives on;
* a step the OS kills (out of memory) becomes `failed` with a message, and the next runs;
* a large model's memory goes back to the system when its step ends.
The child dies with its worker (PR_SET_PDEATHSIG on Linux, plus a parent check in the
stop callback), so a killed worker leaves no orphan writing to the cache. A worker whose store files were
deleted or replaced under it exits at once without writing (database.exit_on_change); so does its step. Every read and
write goes through the run store's RunStore (engine.runs.store.runstore).
"""

from __future__ import annotations

import functools
import os
import signal
import socket
import subprocess
import sys
import time

from engine.cache.context import StepContext
from engine.cache.storage import sweep_orphans
from engine.options.config import REPO_ROOT
from engine.runs import stepcall
from engine.runs.states import Status
from engine.runs.store import database
from engine.runs.store.liveness import WORKERS_ENV, max_workers
from engine.runs.store.runstore import RunStore, open_store

CANCEL_GRACE_S = 2.5  # a running step gets this long to stop by itself after a cancel; then it is terminated (all within 5 s)
STOP_CHECK_EVERY_S = 0.25
POLL_S = 0.2


def _say(msg: str) -> None:
    print(f"[{time.strftime('%Y-%m-%d %H:%M:%S')}] worker {os.getpid()}: {msg}", flush=True)


# --- the worker ------------------------------------------------------------------


def serve(idle_exit: float = 0.0) -> int:
    """Serve queued steps until stopped (SIGTERM/Ctrl-C), or until idle for `idle_exit` seconds (0 = never)."""
    import psutil

    me = psutil.Process()
    database.exit_on_change(_say)
    limit = max_workers()
    with open_store() as rs:
        rs.recover()
        others = rs.register_worker("local", limit)
        if others:
            _say(
                f"{len(others)} worker(s) already serving (pid {', '.join(map(str, others))}); at most {limit} "
                f"(set {WORKERS_ENV} to allow more). Leaving."
            )
            return 0
    swept = sweep_orphans()
    if swept:
        _say(f"removed {len(swept)} half-written file(s) left by killed processes")
    stepcall.Stop.install()
    _say(
        f"serving runs from {database.db_path()} (at most {limit} worker(s); "
        f"{'leaves after ' + format(idle_exit, 'g') + ' s idle' if idle_exit else 'runs until stopped'})"
    )
    idle_since = time.monotonic()
    try:
        with open_store() as rs:
            while not stepcall.Stop.requested:
                rs.check()  # the store it opened is still the store (else it leaves, writing nothing)
                rs.heartbeat(me.pid)
                step = _claim(rs, me.pid)
                if step is None:
                    if idle_exit and time.monotonic() - idle_since > idle_exit and rs.leave_if_idle(me.pid, "local"):
                        _say("nothing queued; leaving")
                        return 0
                    time.sleep(POLL_S * 2)
                    continue
                _run_step(rs, *step, worker_pid=me.pid)
                idle_since = time.monotonic()
            _say(f"stopped by {stepcall.Stop.signal_name}")
    finally:
        with open_store() as rs:
            rs.deregister(me.pid)
    return 0


def _claim(rs: RunStore, worker_pid: int) -> tuple[int, int] | None:
    """Take the first queued step of the oldest local run that has one (one transaction, so no two workers take the same)."""
    with rs.transaction():
        step = rs.next_queued("local")
        if step is None:
            return None
        rs.move(*step, Status.RUNNING, expect=Status.QUEUED, worker=worker_pid, node=socket.gethostname())
    return step


def _die_with_parent() -> None:  # runs in the child between fork and exec
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass  # not Linux: the child's stop callback still notices a dead parent


def _kill_tree(proc: subprocess.Popen) -> None:
    import psutil

    try:
        procs = [psutil.Process(proc.pid)]
        procs += procs[0].children(recursive=True)
    except psutil.NoSuchProcess:
        return
    for p in procs:
        try:
            p.terminate()
        except psutil.NoSuchProcess:
            pass
    _gone, alive = psutil.wait_procs(procs, timeout=0.5)
    for p in alive:
        try:
            p.kill()
        except psutil.NoSuchProcess:
            pass
    proc.wait()


def _exit_message(rc: int) -> str:
    if rc < 0:
        name = signal.Signals(-rc).name if -rc in signal.Signals._value2member_map_ else f"signal {-rc}"
        hint = " This is most often the system running out of memory: try a smaller max_length or batch_tokens, or a smaller model."
        hint = hint if rc == -signal.SIGKILL else ""
        return f"The step's process was killed ({name}) before it finished.{hint}"
    return f"The step's process exited with status {rc} without reporting a result; see the run log."


def _run_step(rs: RunStore, run_id: int, idx: int, *, worker_pid: int) -> None:
    title, n = rs.step_title(run_id, idx)
    database.append_log(run_id, f"step {idx + 1}/{n} started: {title} (worker pid {worker_pid})")
    _say(f"run {run_id} step {idx + 1}: {title}")
    with open(database.log_path(run_id), "ab") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "engine", "worker", "--step", f"{run_id}:{idx}"],
            cwd=REPO_ROOT,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            preexec_fn=_die_with_parent,
        )
    rs.set_step_pid(run_id, idx, proc.pid)
    forced = ""
    last_beat = time.monotonic()
    while proc.poll() is None:
        time.sleep(POLL_S)
        rs.check()
        if stepcall.Stop.requested:
            _kill_tree(proc)
            forced = "stopped"
            break
        requested = rs.cancel_requested(run_id)
        if requested is not None and time.time() - requested > CANCEL_GRACE_S:
            _kill_tree(proc)
            forced = "cancel"
            break
        if time.monotonic() - last_beat > 2.0:
            rs.heartbeat(worker_pid)
            last_beat = time.monotonic()
    rc = proc.wait()
    if forced or rc != 0:
        sweep_orphans()  # whatever the terminated step was writing
    with rs.transaction(durable=True):  # the step's final state (the child's, or this) reaches runs.sqlite
        status, error, result = rs.outcome(run_id, idx)
        if status == Status.RUNNING:  # the child did not report: it was terminated or it died
            if forced == "cancel":
                status, error = (
                    Status.CANCELLED,
                    (
                        f"Cancelled; the step did not stop by itself within {CANCEL_GRACE_S:g} s, "
                        "so its process was terminated. Nothing half-written was kept."
                    ),
                )
            elif forced == "stopped":
                status, error = (
                    Status.INTERRUPTED,
                    f"The worker was stopped ({stepcall.Stop.signal_name}) during this step. Resume the run to do it again.",
                )
            else:
                status, error = Status.FAILED, _exit_message(rc)
            rs.move(run_id, idx, status, expect=Status.RUNNING, error=error)
    detail = stepcall.end_line(status, error, result)
    database.append_log(run_id, f"step {idx + 1}/{n} {status}{detail}")


# --- the child process that executes one step ---------------------------------------------


class _StopCheck:
    """should_stop(): True once the run is cancelled or the worker that started us is gone."""

    def __init__(self, rs: RunStore, run_id: int, parent: int):
        self.rs, self.run_id, self.parent = rs, run_id, parent
        self.t_check, self.stop = 0.0, False

    def __call__(self) -> bool:
        now = time.monotonic()
        if self.stop or now - self.t_check < STOP_CHECK_EVERY_S:
            return self.stop
        self.t_check = now
        self.stop = os.getppid() != self.parent or self.rs.cancel_requested(self.run_id) is not None
        return self.stop


class _Terminated(BaseException):
    """Raised in a step's process on SIGTERM; a BaseException so that no `except Exception` swallows it."""


def _terminated(_signum, _frame) -> None:
    raise _Terminated()


def execute_child(run_id: int, idx: int) -> int:
    """Body of `python -m engine worker --step RUN:IDX`: execute one claimed step and record its outcome."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C in the worker's terminal is the worker's to handle
    signal.signal(signal.SIGTERM, _terminated)  # unwind (temporary files are removed) before the worker's SIGKILL follows
    database.exit_on_change(lambda msg: print(msg, flush=True))
    parent = os.getppid()
    with open_store() as rs:
        claimed = rs.claimed_by(run_id, idx, parent)
        if claimed is None:
            print(f"step {run_id}:{idx} is not running under this worker; nothing to do", flush=True)
            return 1
        if max_workers() > 1:
            import torch

            torch.set_num_threads(max(1, (os.cpu_count() or 1) // max_workers()))
        ctx = StepContext(
            stepcall.Rate(functools.partial(rs.write_progress, run_id, idx)),
            _StopCheck(rs, run_id, parent),
            functools.partial(rs.write_metric, run_id, idx),
        )
        spec_json, data_hash = claimed
        try:
            outcome = stepcall.call(spec_json, data_hash, idx, ctx, where=f"run {run_id}")
        except _Terminated:
            print(f"step {run_id}:{idx} terminated by its worker", flush=True)
            return 143  # the worker records the outcome
        stepcall.record(rs, run_id, idx, outcome, parent)
        sys.stdout.flush()
    return 0
