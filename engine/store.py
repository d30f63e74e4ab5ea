"""The run store: SQLite in the cache folder, and the liveness of the workers that write it.

`runs/runs.sqlite` in WAL mode (schema version in `PRAGMA user_version`, migrated on first use), so any
number of processes can submit and read while workers write; every state change is one short
transaction (`transaction`: BEGIN IMMEDIATE). Tables: runs (the spec as submitted), steps (one per
model x method: state, progress, result), metrics (curves logged while a step trains), workers (pid and
start time of each live worker). Each run also has a plain-text log, runs/run-<id>.log.

A worker that died (kill -9, power loss) is noticed by its pid and process start time (`recover`): its
running steps become `interrupted`. Workers start on demand (`ensure_worker`), detached, at most
$CLINBENCH_WORKERS at once.
"""

from __future__ import annotations

import contextlib
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
from engine.states import Status
from engine.storage import runs_dir

SCHEMA_VERSION = 2
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
            CHECK (status IN ('queued', 'running', 'done', 'failed', 'cancelled', 'interrupted')),  -- states.Status (as of v1)
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
    # version 2: curves logged while a step trains (StepContext.log_metric)
    """
    CREATE TABLE metrics (
        run_id INTEGER NOT NULL REFERENCES runs(id) ON DELETE CASCADE,
        idx INTEGER NOT NULL,
        name TEXT NOT NULL,                 -- train_loss, val_macro_f1, val_perplexity, ...
        step INTEGER NOT NULL,              -- optimiser step
        value REAL NOT NULL,
        t REAL NOT NULL
    );
    CREATE INDEX metrics_by_step ON metrics (run_id, idx, name, step);
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
    """Create the store, or bring an older one up to SCHEMA_VERSION (finished runs and their results are kept)."""
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
    running = conn.execute("SELECT run_id, idx, worker_pid FROM steps WHERE status = ?", (Status.RUNNING,)).fetchall()
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
                "UPDATE steps SET status = ?, finished = ?, updated = ?, eta_s = NULL, "
                "error = ? WHERE run_id = ? AND idx = ? AND status = ? AND worker_pid IS ?",
                (
                    Status.INTERRUPTED,
                    now,
                    now,
                    f"The worker (pid {pid}) stopped while this step ran (killed, crashed, or the machine "
                    f"went down). Resume the run to do this step again.",
                    run_id,
                    idx,
                    Status.RUNNING,
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
            "SELECT COUNT(*) FROM steps s JOIN runs r ON r.id = s.run_id WHERE s.status = ? AND r.cancel_requested IS NULL",
            (Status.QUEUED,),
        ).fetchone()[0]
        if not queued or len(alive_workers(conn)) >= max_workers():
            return None
    return spawn_worker()
