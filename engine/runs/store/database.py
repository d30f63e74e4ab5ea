"""The run store's files: runs.sqlite (schema and its migration, connections, transactions, integrity), run ids, run logs.

`runs/runs.sqlite` in WAL mode (schema version in `PRAGMA user_version`, migrated on first use), so any
number of processes can submit and read while workers write; every state change is one short
transaction (`transaction`: BEGIN IMMEDIATE). Tables: runs (the spec as submitted), steps (one per
model x method: state, progress, result), metrics (curves logged while a step trains), workers (pid and
start time of each live worker). Each run also has a plain-text log, runs/run-<id>.log. The statements that
read and write those tables are engine.runs.store.runstore's.

Integrity when files are deleted or replaced under the store:
* Commits that matter (a submission, a final state, cancel, resume, delete) are checkpointed into runs.sqlite
  (`transaction(conn, durable=True)`), so deleting runs.sqlite-wal/-shm loses at most progress and heartbeats.
* Run ids are never reused: a new id is one more than the highest of the store's AUTOINCREMENT counter, the
  ids in runs/run-<id>.log names and runs/last-run-id (the last id given, rewritten atomically at each
  submission), so rows lost from the database (a deleted WAL, a restored backup) do not bring an id back.
* Each connection remembers the files it opened (device and inode of runs.sqlite, -wal, -shm); SQLite keeps
  them while a connection is open. If one is deleted or replaced, `check` refuses to write (StoreChanged);
  a worker process instead exits at once (`exit_on_change`) without closing, as closing could checkpoint its
  stale WAL over the new store.
* A file at the store's path that is not a ClinBench database is refused with one line and left untouched.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from engine.cache.storage import atomic_write_bytes, runs_dir
from engine.errors import ClinBenchError

SCHEMA_VERSION = 3
Error = sqlite3.Error  # what SQLite raises when the store cannot be used (locked, disk full, ...)

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
    # version 3: where steps run (options.EXECUTORS): the run's executor, the node that ran each step, each worker's kind
    """
    ALTER TABLE runs ADD COLUMN executor TEXT NOT NULL DEFAULT 'local';
    ALTER TABLE steps ADD COLUMN node TEXT;
    ALTER TABLE workers ADD COLUMN kind TEXT NOT NULL DEFAULT 'local';
    """,
]


# --- connection ----------------------------------------------------------------


def db_path() -> Path:
    return runs_dir() / "runs.sqlite"


def log_path(run_id: int) -> Path:
    return runs_dir() / f"run-{int(run_id)}.log"


class StoreChanged(ClinBenchError):
    """The store's files were deleted or replaced while a connection had them open; nothing was written."""


class _Connection(sqlite3.Connection):
    files: tuple = ()  # (name, (st_dev, st_ino)) of runs.sqlite, -wal, -shm as the connection opened them


def _file_ids(path: Path) -> dict:
    out = {}
    for name in (path.name, path.name + "-wal", path.name + "-shm"):
        with contextlib.suppress(FileNotFoundError):
            st = os.stat(path.with_name(name))
            out[name] = (st.st_dev, st.st_ino)
    return out


def changed(conn: sqlite3.Connection) -> str | None:
    """Why the files `conn` opened are no longer the store's (deleted or replaced), or None if they still are."""
    now = _file_ids(db_path())
    for name, ident in getattr(conn, "files", ()):
        if now.get(name) != ident:
            return f"the run store {db_path()} changed under this process ({name} was {'replaced' if name in now else 'deleted'})"
    return None


_ON_CHANGE: list[Callable[[str], None]] = []


def check(conn: sqlite3.Connection) -> None:
    """Raise StoreChanged (or, in a worker process, leave: `exit_on_change`) if the store changed under `conn`."""
    reason = changed(conn)
    if reason:
        for leave in _ON_CHANGE:
            leave(reason)
        raise StoreChanged(f"{reason}; nothing was written. Run the command again.")


def exit_on_change(say: Callable[[str], None]) -> None:
    """For worker processes: when `check` finds the store changed, say so and exit at once (status 3). Closing
    the connection could checkpoint its stale WAL over the new store, so nothing is closed or written."""

    def leave(reason: str) -> None:
        say(f"{reason}; stopping without writing to it (a new worker starts when a run is queued)")
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(3)

    _ON_CHANGE[:] = [leave]


@contextlib.contextmanager
def connect() -> Iterator[sqlite3.Connection]:
    """A connection in autocommit mode; write with `transaction(conn)`. Creates/migrates the store on first use."""
    conn = sqlite3.connect(db_path(), timeout=30.0, isolation_level=None, factory=_Connection)
    try:
        conn.row_factory = sqlite3.Row
        conn.execute("PRAGMA busy_timeout = 30000")
        conn.execute("PRAGMA foreign_keys = ON")
        try:
            _migrate(conn)
        except sqlite3.DatabaseError as exc:
            if getattr(exc, "sqlite_errorcode", None) not in (sqlite3.SQLITE_NOTADB, sqlite3.SQLITE_CORRUPT):
                raise
            raise _not_ours(str(exc)) from None
        conn.files = tuple(_file_ids(db_path()).items())  # after the first read, so SQLite has opened -wal and -shm
        yield conn
    finally:
        conn.close()


def _not_ours(why: str) -> ClinBenchError:
    return ClinBenchError(
        f"the run store at {db_path()} is not a ClinBench database ({why}): move it aside and run the command again "
        "(a new, empty store is made); ClinBench left the file as it is, in case its data can be recovered."
    )


def checkpoint(conn: sqlite3.Connection) -> None:
    """Copy the WAL into runs.sqlite, so that what was committed survives the loss of runs.sqlite-wal."""
    _busy, log, done = conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
    if done < log:  # a reader holds an older snapshot: wait for it (busy_timeout), as a commit would
        conn.execute("PRAGMA wal_checkpoint(FULL)").fetchone()


@contextlib.contextmanager
def transaction(conn: sqlite3.Connection, durable: bool = False) -> Iterator[sqlite3.Connection]:
    """BEGIN IMMEDIATE ... COMMIT: takes the write lock up front, so read-then-write is race free. Refuses to
    write if the store changed under `conn` (`check`); `durable`: checkpoint the commit into runs.sqlite."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        check(conn)
        yield conn
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")
    if durable:
        checkpoint(conn)


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
        if version == 0 and conn.execute("SELECT COUNT(*) FROM sqlite_master").fetchone()[0]:
            raise _not_ours("an SQLite database with other tables")
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


def _last_id_path() -> Path:
    return runs_dir() / "last-run-id"


def new_run_id(conn: sqlite3.Connection) -> int:
    """The id for a run being inserted (call inside its transaction): above every id given before, even one whose
    rows the database lost. Records it in runs/last-run-id before the insert commits."""
    seen = [r[0] for r in conn.execute("SELECT seq FROM sqlite_sequence WHERE name = 'runs' UNION ALL SELECT MAX(id) FROM runs")]
    with contextlib.suppress(OSError, ValueError):
        seen.append(int(_last_id_path().read_text().strip()))
    seen += [int(p.stem[4:]) for p in runs_dir().glob("run-*.log") if p.stem[4:].isdigit()]
    run_id = max([0] + [int(x) for x in seen if x is not None]) + 1
    atomic_write_bytes(_last_id_path(), f"{run_id}\n".encode())
    return run_id


def append_log(run_id: int, line: str) -> None:
    with open(log_path(run_id), "a", encoding="utf-8") as fh:
        fh.write(f"[{time.strftime('%Y-%m-%d %H:%M:%S')}] {line}\n")
