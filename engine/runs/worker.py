"""Worker processes: take queued steps from the run store and execute each in a process of its own.

`python -m engine worker` registers itself in the store (at most max_workers() at once; an
extra one leaves at once), then takes queued steps in submission order (run id, then step
index). Each step runs in a process of its own (engine.runs.stephost: on Linux forked from a
warm host that has already imported torch, transformers and scikit-learn, which the worker
starts when it starts; elsewhere a fresh `python -m engine worker --step RUN:IDX`) that loads
the spec and the letters, checks the letters' hash against the one recorded at submission,
calls `experiment.execute` with a StepContext backed by the store, and writes the step's
outcome in one transaction: done (with a result summary), failed (a one-line message; the
traceback goes to the run log) or cancelled. Progress goes to the store at most twice a
second, metrics (training curves) as they are logged; the cancel flag is read at most four
times a second, at batch boundaries.

Why a process per step:
* a step that does not stop at a batch boundary within CANCEL_GRACE_S of a cancel is
  terminated with its process tree while the worker lives on;
* a step the OS kills (out of memory) becomes `failed` with a message, and the next runs;
* a large model's memory goes back to the system when its step ends.
The step's process dies with its worker (engine.runs.stephost: PR_SET_PDEATHSIG, a forked
step also waits for the worker's exit on a pidfd; the stop callback checks the worker too),
so a killed worker leaves no orphan writing to the cache. A worker whose store files were
deleted or replaced under it exits at once without writing (database.exit_on_change); so does its step. Every read and
write goes through the run store's RunStore (engine.runs.store.runstore).
"""

from __future__ import annotations

import os
import signal
import socket
import time

from engine.cache.storage import sweep_orphans
from engine.runs import stepcall, stephost
from engine.runs.states import Status
from engine.runs.store import database
from engine.runs.store.liveness import WORKERS_ENV, max_workers
from engine.runs.store.runstore import RunStore, open_store

CANCEL_GRACE_S = 2.5  # a running step gets this long to stop by itself after a cancel; then it is terminated (all within 5 s)
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
    host = stephost.start()  # the warm host imports while the loop below makes its first claim
    _say(
        f"serving runs from {database.db_path()} (at most {limit} worker(s); "
        f"{'leaves after ' + format(idle_exit, 'g') + ' s idle' if idle_exit else 'runs until stopped'}; steps run in {host})"
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


def _kill_tree(proc) -> None:
    """Terminate a step's process (a stephost.spawn handle) and every process under it; SIGKILL what is left after 0.5 s."""
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
    proc = stephost.spawn(run_id, idx, worker_pid, database.log_path(run_id))
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
