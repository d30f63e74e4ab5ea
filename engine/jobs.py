"""Background runs: the durable run store and what the CLI and the dashboard call on it.

A run is an experiment spec expanded into steps (one per model x method). The store is
SQLite in the cache folder (`runs/runs.sqlite`, WAL mode, schema version in
`PRAGMA user_version`), so any number of processes can submit and read while workers
write. Every state change is one short transaction.

Step states: queued -> running -> done | failed | cancelled | interrupted.
A run's state is derived from its steps (never stored twice, so it cannot disagree):
running if a step runs (or some have finished and some wait), queued if none has started,
else interrupted, cancelled, failed, done, in that order of precedence.

The dashboard and the CLI only submit and read; steps execute in worker processes
(engine.worker), started here on demand. A worker that died (kill -9, power loss) is
noticed by its pid and process start time: its running steps become `interrupted`, and
`resume` queues them again; finished steps keep their results.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

from engine.config import CACHE_ENV, REPO_ROOT, cache_dir
from engine.errors import ClinBenchError
from engine.storage import runs_dir

SCHEMA_VERSION = 1
STEP_STATES = ("queued", "running", "done", "failed", "cancelled", "interrupted")
FINAL_STATES = ("done", "failed", "cancelled", "interrupted")
WORKERS_ENV = "CLINBENCH_WORKERS"
WORKER_IDLE_EXIT_S = 60.0  # a worker started on demand leaves after this long with nothing queued

_SCHEMA = [
    # version 1
    """
    CREATE TABLE runs (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        name TEXT NOT NULL,
        spec TEXT NOT NULL,                 -- JSON, data paths made absolute at submission
        data_hash TEXT NOT NULL,            -- content hash of the letters when submitted
        created REAL NOT NULL,
        cancel_requested REAL               -- when the user asked to cancel, or NULL
    );
    CREATE TABLE steps (
        run_id INTEGER NOT NULL REFERENCES runs(id) ON DELETE CASCADE,
        idx INTEGER NOT NULL,
        model TEXT NOT NULL,
        method TEXT NOT NULL,
        title TEXT NOT NULL,
        status TEXT NOT NULL DEFAULT 'queued'
            CHECK (status IN ('queued', 'running', 'done', 'failed', 'cancelled', 'interrupted')),
        done INTEGER NOT NULL DEFAULT 0,
        total INTEGER NOT NULL DEFAULT 0,
        stage TEXT NOT NULL DEFAULT '',
        rate REAL,                          -- items per second in the current stage
        eta_s REAL,
        started REAL,
        finished REAL,
        updated REAL,
        error TEXT,                         -- one line a user understands (the traceback is in the run log)
        result TEXT,                        -- JSON summary: artifact folder, macro_f1, cache hits, ...
        worker_pid INTEGER,
        step_pid INTEGER,
        attempts INTEGER NOT NULL DEFAULT 0,
        PRIMARY KEY (run_id, idx)
    );
    CREATE INDEX steps_by_status ON steps (status, run_id, idx);
    CREATE TABLE workers (
        pid INTEGER PRIMARY KEY,
        create_time REAL NOT NULL,          -- with the pid, tells a live worker from a reused pid
        host TEXT NOT NULL,
        started REAL NOT NULL,
        heartbeat REAL NOT NULL
    );
    """,
]


# --- connection ----------------------------------------------------------------


def db_path() -> Path:
    return runs_dir() / "runs.sqlite"


def log_path(run_id: int) -> Path:
    return runs_dir() / f"run-{int(run_id)}.log"


@contextlib.contextmanager
def connect() -> Iterator[sqlite3.Connection]:
    """A connection in autocommit mode; write with `transaction(conn)`. Creates/migrates the store on first use."""
    conn = sqlite3.connect(db_path(), timeout=30.0, isolation_level=None)
    try:
        conn.row_factory = sqlite3.Row
        conn.execute("PRAGMA busy_timeout = 30000")
        conn.execute("PRAGMA foreign_keys = ON")
        _migrate(conn)
        yield conn
    finally:
        conn.close()


@contextlib.contextmanager
def transaction(conn: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    """BEGIN IMMEDIATE ... COMMIT: takes the write lock up front, so read-then-write is race free."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield conn
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")


_READY: set[str] = set()  # stores this process has already checked and migrated


@contextlib.contextmanager
def _creation_lock() -> Iterator[None]:
    """An exclusive file lock around creating/migrating the store: SQLite answers a second process that
    switches a new file to WAL at the same moment with 'database is locked' instead of waiting."""
    try:
        import fcntl
    except ImportError:  # not POSIX: one process creates the store first in practice
        yield
        return
    with open(runs_dir() / "store.lock", "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _migrate(conn: sqlite3.Connection) -> None:
    key = str(db_path())
    if key in _READY and conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION:
        return
    with _creation_lock():
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        if version > SCHEMA_VERSION:
            raise ClinBenchError(
                f"The run store {db_path()} was written by a newer ClinBench (schema {version}, this one reads "
                f"{SCHEMA_VERSION}). Update ClinBench, or point CLINBENCH_CACHE at another folder."
            )
        if conn.execute("PRAGMA journal_mode = WAL").fetchone()[0].lower() != "wal":
            raise ClinBenchError(
                f"SQLite could not switch {db_path()} to WAL mode (is the cache on a network drive?). "
                "Put the cache folder on a local disk (CLINBENCH_CACHE)."
            )
        if version < SCHEMA_VERSION:
            with transaction(conn):
                for script in _SCHEMA[version:]:
                    for statement in filter(str.strip, script.split(";")):
                        conn.execute(statement)
                conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
    _READY.add(key)


def append_log(run_id: int, line: str) -> None:
    with open(log_path(run_id), "a", encoding="utf-8") as fh:
        fh.write(f"[{time.strftime('%Y-%m-%d %H:%M:%S')}] {line}\n")


# --- workers' liveness -----------------------------------------------------------


def process_alive(pid: int | None, create_time: float | None = None) -> bool:
    """True if `pid` runs (not a zombie) and, when given, started at `create_time` (so a reused pid does not count)."""
    import psutil

    if not pid:
        return False
    try:
        proc = psutil.Process(int(pid))
        if proc.status() == psutil.STATUS_ZOMBIE:
            return False
        return create_time is None or abs(proc.create_time() - create_time) < 0.05
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return False


def alive_workers(conn: sqlite3.Connection) -> list[dict]:
    """Registered workers whose process is alive on this host."""
    host = socket.gethostname()
    return [
        dict(r)
        for r in conn.execute("SELECT * FROM workers ORDER BY started")
        if r["host"] == host and process_alive(r["pid"], r["create_time"])
    ]


def recover(conn: sqlite3.Connection | None = None) -> list[tuple[int, int]]:
    """Mark the running steps of dead workers `interrupted` and forget those workers. Returns (run, step) pairs."""
    if conn is None:
        with connect() as c:
            return recover(c)
    running = conn.execute("SELECT run_id, idx, worker_pid FROM steps WHERE status = 'running'").fetchall()
    workers = {r["pid"]: r for r in conn.execute("SELECT * FROM workers")}
    host = socket.gethostname()
    dead_workers = [pid for pid, r in workers.items() if r["host"] == host and not process_alive(pid, r["create_time"])]
    dead_steps = [
        (r["run_id"], r["idx"], r["worker_pid"]) for r in running if r["worker_pid"] not in workers or r["worker_pid"] in dead_workers
    ]
    if not dead_steps and not dead_workers:
        return []
    now = time.time()
    with transaction(conn):
        for run_id, idx, pid in dead_steps:
            conn.execute(
                "UPDATE steps SET status = 'interrupted', finished = ?, updated = ?, eta_s = NULL, "
                "error = ? WHERE run_id = ? AND idx = ? AND status = 'running' AND worker_pid IS ?",
                (
                    now,
                    now,
                    f"The worker (pid {pid}) stopped while this step ran (killed, crashed, or the machine "
                    f"went down). Resume the run to do this step again.",
                    run_id,
                    idx,
                    pid,
                ),
            )
        for pid in dead_workers:
            conn.execute("DELETE FROM workers WHERE pid = ?", (pid,))
    for run_id, idx, pid in dead_steps:
        append_log(run_id, f"step {idx + 1}: interrupted (worker pid {pid} is gone)")
    return [(r, i) for r, i, _ in dead_steps]


def max_workers() -> int:
    """How many workers may run at once: $CLINBENCH_WORKERS, default 1 (a CPU is best used by one job at a time)."""
    raw = os.environ.get(WORKERS_ENV, "1")
    try:
        n = int(raw)
    except ValueError:
        raise ClinBenchError(f"{WORKERS_ENV}={raw!r} is not a whole number; set it to 1 or more.") from None
    if n < 1:
        raise ClinBenchError(f"{WORKERS_ENV}={n}: set it to 1 or more.")
    return n


_SPAWNED: list[subprocess.Popen] = []


def spawn_worker(idle_exit: float = WORKER_IDLE_EXIT_S) -> int:
    """Start `python -m engine worker` detached from this process (its own session: it outlives a closed
    tab, a stopped dashboard or a Ctrl-C in the terminal that submitted). Returns its pid."""
    for proc in list(_SPAWNED):  # reap workers we started that have exited, so no zombie lingers
        if proc.poll() is not None:
            _SPAWNED.remove(proc)
    env = {**os.environ, CACHE_ENV: str(cache_dir())}
    with open(runs_dir() / "worker.log", "ab") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "engine", "worker", "--idle-exit", str(idle_exit)],
            cwd=REPO_ROOT,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    _SPAWNED.append(proc)
    return proc.pid


def ensure_worker() -> int | None:
    """Start a worker if steps are queued and fewer than max_workers() are alive. Returns the new pid or None."""
    with connect() as conn:
        recover(conn)
        queued = conn.execute(
            "SELECT COUNT(*) FROM steps s JOIN runs r ON r.id = s.run_id WHERE s.status = 'queued' AND r.cancel_requested IS NULL"
        ).fetchone()[0]
        if not queued or len(alive_workers(conn)) >= max_workers():
            return None
    return spawn_worker()


# --- submitting and reading ----------------------------------------------------------


def submit(spec, *, start_worker: bool = True) -> int:
    """Check a spec (its data loads and validates, its model names resolve) and queue it. Returns the run id.

    Nothing is queued when the check fails; the error says what to fix.
    """
    from engine import models
    from engine.experiment import Spec

    if not isinstance(spec, Spec):
        raise ClinBenchError("submit() takes an engine.experiment.Spec (see experiment.parse_spec / load_spec).")
    if spec.data.path != "default":
        spec.data.path = str(Path(spec.data.path).expanduser().resolve())
    dataset = spec.data.load()  # raises DataError with the validation report
    for name in spec.models:
        models.resolve(name)  # unknown names and missing folders fail now; hub availability is checked when the step runs
    steps = spec.steps()
    now = time.time()
    with connect() as conn, transaction(conn):
        cur = conn.execute(
            "INSERT INTO runs (name, spec, data_hash, created) VALUES (?, ?, ?, ?)",
            (spec.name, json.dumps(spec.to_dict()), dataset.data_hash, now),
        )
        run_id = int(cur.lastrowid)
        conn.executemany(
            "INSERT INTO steps (run_id, idx, model, method, title, updated) VALUES (?, ?, ?, ?, ?, ?)",
            [(run_id, i, s["model"], s["method"], s["title"], now) for i, s in enumerate(steps)],
        )
    append_log(
        run_id,
        f"run {run_id} '{spec.name}' submitted: {len(steps)} step(s), {len(dataset)} letters from {spec.data.path} "
        f"(data hash {dataset.data_hash[:12]})",
    )
    if start_worker:
        ensure_worker()
    return run_id


def run_status(statuses: list[str]) -> str:
    s = set(statuses)
    if "running" in s:
        return "running"
    if "queued" in s:
        return "running" if s & {"done", "failed"} else "queued"
    for state in ("interrupted", "cancelled", "failed"):
        if state in s:
            return state
    return "done"


def _step_dict(r: sqlite3.Row, now: float) -> dict:
    seconds = None
    if r["started"]:
        seconds = round((r["finished"] or now) - r["started"], 2)
    return {
        "index": r["idx"],
        "title": r["title"],
        "model": r["model"],
        "method": r["method"],
        "status": r["status"],
        "progress": {"done": r["done"], "total": r["total"], "stage": r["stage"], "rate": r["rate"], "eta_s": r["eta_s"]},
        "error": r["error"],
        "result": json.loads(r["result"]) if r["result"] else None,
        "started": r["started"],
        "finished": r["finished"],
        "seconds": seconds,
        "attempts": r["attempts"],
        "worker_pid": r["worker_pid"] if r["status"] == "running" else None,
        "step_pid": r["step_pid"] if r["status"] == "running" else None,
    }


def _run_dict(run: sqlite3.Row, steps: list[sqlite3.Row], with_spec: bool) -> dict:
    now = time.time()
    step_dicts = [_step_dict(s, now) for s in steps]
    starts = [s["started"] for s in steps if s["started"]]
    status = run_status([s["status"] for s in steps])
    counts = {state: sum(s["status"] == state for s in steps) for state in STEP_STATES}
    out = {
        "id": run["id"],
        "name": run["name"],
        "status": status,
        "created": run["created"],
        "started": min(starts) if starts else None,
        "finished": max((s["finished"] or 0) for s in steps) if status in FINAL_STATES and starts else None,
        "cancel_requested": run["cancel_requested"] is not None,
        "worker_pid": next((s["worker_pid"] for s in steps if s["status"] == "running"), None),
        "counts": counts,
        "n_steps": len(steps),
        "steps": step_dicts,
        "log": str(log_path(run["id"])),
    }
    if with_spec:
        out["spec"] = json.loads(run["spec"])
        out["data_hash"] = run["data_hash"]
    return out


def list_runs(limit: int | None = None) -> list[dict]:
    """All runs, newest first, with their steps."""
    with connect() as conn:
        recover(conn)
        runs = conn.execute("SELECT * FROM runs ORDER BY id DESC" + (f" LIMIT {int(limit)}" if limit else "")).fetchall()
        steps: dict[int, list] = {}
        for s in conn.execute("SELECT * FROM steps ORDER BY run_id, idx"):
            steps.setdefault(s["run_id"], []).append(s)
    return [_run_dict(r, steps.get(r["id"], []), with_spec=True) for r in runs]


def get_run(run_id: int) -> dict:
    """One run with its spec and steps; ClinBenchError if there is no such run."""
    with connect() as conn:
        recover(conn)
        return _get(conn, run_id)


def _get(conn: sqlite3.Connection, run_id: int) -> dict:
    run = conn.execute("SELECT * FROM runs WHERE id = ?", (int(run_id),)).fetchone()
    if run is None:
        raise ClinBenchError(f"There is no run {run_id}. `python -m engine runs` lists the runs.")
    steps = conn.execute("SELECT * FROM steps WHERE run_id = ? ORDER BY idx", (int(run_id),)).fetchall()
    return _run_dict(run, steps, with_spec=True)


def cancel(run_id: int) -> dict:
    """Ask a run to stop: queued steps are cancelled now; a running step stops at its next batch boundary
    (within a few seconds, else its worker terminates the step's process). Returns the run."""
    now = time.time()
    with connect() as conn:
        with transaction(conn):
            run = _get(conn, run_id)
            if run["status"] in FINAL_STATES:
                return run
            conn.execute("UPDATE runs SET cancel_requested = ? WHERE id = ?", (now, int(run_id)))
            conn.execute(
                "UPDATE steps SET status = 'cancelled', finished = ?, updated = ?, error = 'Cancelled before it started.' "
                "WHERE run_id = ? AND status = 'queued'",
                (now, now, int(run_id)),
            )
        append_log(run_id, "cancel requested")
        return _get(conn, run_id)


def resume(run_id: int, *, start_worker: bool = True) -> dict:
    """Queue the interrupted, cancelled and failed steps of a run again; finished steps stay as they are."""
    now = time.time()
    with connect() as conn:
        recover(conn)
        with transaction(conn):
            run = _get(conn, run_id)
            if run["status"] == "running" or any(s["status"] == "running" for s in run["steps"]):
                raise ClinBenchError(
                    f"Run {run_id} is still running; wait for it to finish, or cancel it first (`python -m engine runs cancel {run_id}`)."
                )
            again = [s["index"] for s in run["steps"] if s["status"] in ("interrupted", "cancelled", "failed")]
            conn.execute("UPDATE runs SET cancel_requested = NULL WHERE id = ?", (int(run_id),))
            conn.execute(
                "UPDATE steps SET status = 'queued', done = 0, total = 0, stage = '', rate = NULL, eta_s = NULL, "
                "started = NULL, finished = NULL, error = NULL, result = NULL, worker_pid = NULL, step_pid = NULL, "
                "updated = ? WHERE run_id = ? AND status IN ('interrupted', 'cancelled', 'failed')",
                (now, int(run_id)),
            )
        append_log(run_id, f"resumed: step(s) {', '.join(str(i + 1) for i in again) or 'none'} queued again")
        run = _get(conn, run_id)
    if start_worker and again:
        ensure_worker()
    return run


def delete(run_id: int) -> None:
    """Forget a finished run and its log. Its artifacts stay in the cache (other runs may share them)."""
    with connect() as conn:
        recover(conn)
        with transaction(conn):
            run = _get(conn, run_id)
            if run["status"] not in FINAL_STATES:
                raise ClinBenchError(
                    f"Run {run_id} is {run['status']}; cancel it first (`python -m engine runs cancel {run_id}`), then delete it."
                )
            conn.execute("DELETE FROM steps WHERE run_id = ?", (int(run_id),))
            conn.execute("DELETE FROM runs WHERE id = ?", (int(run_id),))
    with contextlib.suppress(FileNotFoundError):
        log_path(run_id).unlink()


def read_log(run_id: int) -> str:
    get_run(run_id)  # a clear error for an unknown id
    try:
        return log_path(run_id).read_text(encoding="utf-8", errors="replace")
    except FileNotFoundError:
        return ""


def workers() -> list[dict]:
    """Live workers with what each is doing (for the dashboard's worker status)."""
    with connect() as conn:
        recover(conn)
        out = alive_workers(conn)
        for w in out:
            step = conn.execute("SELECT run_id, idx, title FROM steps WHERE status = 'running' AND worker_pid = ?", (w["pid"],)).fetchone()
            w["step"] = dict(step) if step else None
    return out
