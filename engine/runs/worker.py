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
deleted or replaced under it exits at once without writing (store.exit_on_change); so does its step.
"""

from __future__ import annotations

import functools
import json
import os
import signal
import socket
import subprocess
import sys
import time

from engine.cache.context import StepContext
from engine.cache.storage import sweep_orphans
from engine.options.config import REPO_ROOT
from engine.runs import launch, stepcall, store
from engine.runs.states import Status

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
    store.exit_on_change(_say)
    limit = store.max_workers()
    with store.connect() as conn:
        store.recover(conn)
        others = store.register_worker(conn, "local", limit)
        if others:
            _say(
                f"{len(others)} worker(s) already serving (pid {', '.join(map(str, others))}); at most {limit} "
                f"(set {store.WORKERS_ENV} to allow more). Leaving."
            )
            return 0
    swept = sweep_orphans()
    if swept:
        _say(f"removed {len(swept)} half-written file(s) left by killed processes")
    stepcall.Stop.install()
    _say(
        f"serving runs from {store.db_path()} (at most {limit} worker(s); "
        f"{'leaves after ' + format(idle_exit, 'g') + ' s idle' if idle_exit else 'runs until stopped'})"
    )
    idle_since = time.monotonic()
    try:
        with store.connect() as conn:
            while not stepcall.Stop.requested:
                store.check(conn)  # the store it opened is still the store (else it leaves, writing nothing)
                conn.execute("UPDATE workers SET heartbeat = ? WHERE pid = ?", (time.time(), me.pid))
                step = _claim(conn, me.pid)
                if step is None:
                    if idle_exit and time.monotonic() - idle_since > idle_exit and _leave(conn, me.pid):
                        _say("nothing queued; leaving")
                        return 0
                    time.sleep(POLL_S * 2)
                    continue
                _run_step(conn, *step, worker_pid=me.pid)
                idle_since = time.monotonic()
            _say(f"stopped by {stepcall.Stop.signal_name}")
    finally:
        with store.connect() as conn:
            conn.execute("DELETE FROM workers WHERE pid = ?", (me.pid,))
    return 0


def _claim(conn, worker_pid: int) -> tuple[int, int] | None:
    """Take the first queued step of the oldest run that has one (one transaction, so no two workers take the same)."""
    with store.transaction(conn):
        row = conn.execute(
            "SELECT s.run_id, s.idx FROM steps s JOIN runs r ON r.id = s.run_id "
            "WHERE s.status = ? AND r.cancel_requested IS NULL AND r.executor = 'local' ORDER BY s.run_id, s.idx LIMIT 1",
            (Status.QUEUED,),
        ).fetchone()
        if row is None:
            return None
        now = time.time()
        conn.execute(
            "UPDATE steps SET status = ?, worker_pid = ?, step_pid = NULL, started = ?, updated = ?, node = ?, "
            "finished = NULL, attempts = attempts + 1, stage = 'starting', done = 0, total = 0, rate = NULL, eta_s = NULL "
            "WHERE run_id = ? AND idx = ?",
            (Status.RUNNING, worker_pid, now, now, socket.gethostname(), row["run_id"], row["idx"]),
        )
        # a new attempt draws its curves afresh (a training resumed from a checkpoint logs its earlier points again)
        conn.execute("DELETE FROM metrics WHERE run_id = ? AND idx = ?", (row["run_id"], row["idx"]))
    return row["run_id"], row["idx"]


def _leave(conn, worker_pid: int) -> bool:
    """Deregister, unless something was queued meanwhile (checked in the same transaction as submissions write)."""
    with store.transaction(conn):
        if launch.queued(conn, "local"):
            return False
        conn.execute("DELETE FROM workers WHERE pid = ?", (worker_pid,))
    return True


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


def _run_step(conn, run_id: int, idx: int, *, worker_pid: int) -> None:
    row = conn.execute(
        "SELECT title, (SELECT COUNT(*) FROM steps WHERE run_id = ?) AS n FROM steps WHERE run_id = ? AND idx = ?", (run_id, run_id, idx)
    ).fetchone()
    store.append_log(run_id, f"step {idx + 1}/{row['n']} started: {row['title']} (worker pid {worker_pid})")
    _say(f"run {run_id} step {idx + 1}: {row['title']}")
    with open(store.log_path(run_id), "ab") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "engine", "worker", "--step", f"{run_id}:{idx}"],
            cwd=REPO_ROOT,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            preexec_fn=_die_with_parent,
        )
    conn.execute("UPDATE steps SET step_pid = ? WHERE run_id = ? AND idx = ? AND status = ?", (proc.pid, run_id, idx, Status.RUNNING))
    forced = ""
    last_beat = time.monotonic()
    while proc.poll() is None:
        time.sleep(POLL_S)
        store.check(conn)
        if stepcall.Stop.requested:
            _kill_tree(proc)
            forced = "stopped"
            break
        requested = conn.execute("SELECT cancel_requested FROM runs WHERE id = ?", (run_id,)).fetchone()["cancel_requested"]
        if requested is not None and time.time() - requested > CANCEL_GRACE_S:
            _kill_tree(proc)
            forced = "cancel"
            break
        if time.monotonic() - last_beat > 2.0:
            conn.execute("UPDATE workers SET heartbeat = ? WHERE pid = ?", (time.time(), worker_pid))
            last_beat = time.monotonic()
    rc = proc.wait()
    if forced or rc != 0:
        sweep_orphans()  # whatever the terminated step was writing
    now = time.time()
    with store.transaction(conn, durable=True):  # the step's final state (the child's, or this) reaches runs.sqlite
        step = conn.execute("SELECT status, error, result FROM steps WHERE run_id = ? AND idx = ?", (run_id, idx)).fetchone()
        status, error = Status(step["status"]), step["error"]
        result = json.loads(step["result"]) if step["result"] else {}
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
            conn.execute(
                "UPDATE steps SET status = ?, error = ?, finished = ?, updated = ?, eta_s = NULL WHERE run_id = ? AND idx = ? AND status = ?",
                (status, error, now, now, run_id, idx, Status.RUNNING),
            )
    detail = stepcall.end_line(status, error, result)
    store.append_log(run_id, f"step {idx + 1}/{row['n']} {status}{detail}")


# --- the child process that executes one step ---------------------------------------------


class _StopCheck:
    """should_stop(): True once the run is cancelled or the worker that started us is gone."""

    def __init__(self, conn, run_id: int, parent: int):
        self.conn, self.run_id, self.parent = conn, run_id, parent
        self.t_check, self.stop = 0.0, False

    def __call__(self) -> bool:
        now = time.monotonic()
        if self.stop or now - self.t_check < STOP_CHECK_EVERY_S:
            return self.stop
        self.t_check = now
        if os.getppid() != self.parent:
            self.stop = True
        else:
            row = self.conn.execute("SELECT cancel_requested FROM runs WHERE id = ?", (self.run_id,)).fetchone()
            self.stop = row is None or row["cancel_requested"] is not None
        return self.stop


class _Terminated(BaseException):
    """Raised in a step's process on SIGTERM; a BaseException so that no `except Exception` swallows it."""


def _terminated(_signum, _frame) -> None:
    raise _Terminated()


def execute_child(run_id: int, idx: int) -> int:
    """Body of `python -m engine worker --step RUN:IDX`: execute one claimed step and record its outcome."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C in the worker's terminal is the worker's to handle
    signal.signal(signal.SIGTERM, _terminated)  # unwind (temporary files are removed) before the worker's SIGKILL follows
    store.exit_on_change(lambda msg: print(msg, flush=True))
    parent = os.getppid()
    with store.connect() as conn:
        row = conn.execute(
            "SELECT s.status, s.worker_pid, r.spec, r.data_hash FROM steps s JOIN runs r ON r.id = s.run_id "
            "WHERE s.run_id = ? AND s.idx = ?",
            (run_id, idx),
        ).fetchone()
        if row is None or row["status"] != Status.RUNNING or row["worker_pid"] != parent:
            print(f"step {run_id}:{idx} is not running under this worker; nothing to do", flush=True)
            return 1
        if store.max_workers() > 1:
            import torch

            torch.set_num_threads(max(1, (os.cpu_count() or 1) // store.max_workers()))
        ctx = StepContext(
            stepcall.Rate(functools.partial(stepcall.write_progress, conn, run_id, idx)),
            _StopCheck(conn, run_id, parent),
            functools.partial(stepcall.write_metric, conn, run_id, idx),
        )
        try:
            outcome = stepcall.call(row["spec"], row["data_hash"], idx, ctx, where=f"run {run_id}")
        except _Terminated:
            print(f"step {run_id}:{idx} terminated by its worker", flush=True)
            return 143  # the worker records the outcome
        stepcall.record(conn, run_id, idx, outcome, parent)
        sys.stdout.flush()
    return 0
