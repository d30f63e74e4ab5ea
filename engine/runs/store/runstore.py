"""RunStore: the one object through which every process reads and writes runs, steps, curves and workers.

`open_store()` gives a RunStore on a fresh connection (engine.runs.store.database). Every SQL statement on the store's
tables is a method here; the CLI and dashboard (engine.runs.jobs), the local worker, the Ray driver and the estimates
call these methods and never write SQL.

* Runs: `add_run` (a submission, under a new id, durable), `runs` / `run` (engine.runs.view.RunView, the view every
  reader shares), the cancel flag (`request_cancel`, `clear_cancel`, `cancel_requested`, `cancel_requests`),
  `delete_run`, `run_input` (the spec and data hash a step executes).
* Steps: `move` is the one place where a step changes state. It moves the step only if it is still where the caller
  expects it (else another writer came first, a cancel or a recovery, and it returns None), refuses a move that
  engine.runs.states does not allow (IllegalTransition), writes the columns that go with the new state (a claim
  counts an attempt and clears the last one's progress and curves; a final state stamps the end; a resume clears the
  attempt) and returns the run's state as derived from its steps. While a step runs, its progress, curves, process
  and node are details of that state, not moves (`write_progress`, `write_metric`, `set_step_pid`, `set_started_on`,
  `count_retry`). What executors ask: `next_queued`, `queued_steps`, `step_states`, `queued`, `busy`.
* Workers: `register_worker` (within a limit, in one transaction), `heartbeat`, `deregister`, `leave_if_idle`,
  `alive_workers`, `running_under`, `recover` (the running steps of dead workers become interrupted).
* History: `finished_steps`, the finished steps time estimates rest on.

A read that a write depends on goes in the same `transaction()` (BEGIN IMMEDIATE: no other writer in between); `move`
opens one of its own when the caller has none (durable, i.e. checkpointed into runs.sqlite, for every state but
running).
"""

from __future__ import annotations

import contextlib
import json
import socket
import sqlite3
import time
from collections.abc import Collection, Iterator

from engine.errors import ClinBenchError
from engine.runs.states import Status, check_transition, run_status
from engine.runs.store import database
from engine.runs.store.liveness import process_alive
from engine.runs.view import RunView

_ANY = object()  # move(worker=...) left out: whichever worker the step runs under


@contextlib.contextmanager
def open_store() -> Iterator[RunStore]:
    """A RunStore on a new connection, closed after the block (the store is created or migrated on first use)."""
    with database.connect() as conn:
        yield RunStore(conn)


class RunStore:
    """One connection to the run store, with every read and write ClinBench makes on it."""

    def __init__(self, conn: sqlite3.Connection):
        self.conn = conn

    @contextlib.contextmanager
    def transaction(self, durable: bool = False) -> Iterator[RunStore]:
        """BEGIN IMMEDIATE ... COMMIT (database.transaction): reads in the block see no other writer's changes."""
        with database.transaction(self.conn, durable):
            yield self

    def check(self) -> None:
        """StoreChanged (or, in a worker, exit) if the store's files changed under this connection (database.check)."""
        database.check(self.conn)

    @contextlib.contextmanager
    def _writing(self, durable: bool) -> Iterator[None]:
        """The caller's transaction when there is one, else one of its own."""
        if self.conn.in_transaction:
            yield
        else:
            with database.transaction(self.conn, durable):
                yield

    # --- runs ------------------------------------------------------------------------

    def add_run(self, name: str, spec: dict, data_hash: str, executor: str, steps: list[dict]) -> int:
        """Queue a run and its steps (each a dict with model, method, title) in one durable transaction; its new id."""
        now = time.time()
        with self.transaction(durable=True):
            run_id = database.new_run_id(self.conn)  # never an id an earlier run had, even one the database lost
            self.conn.execute(
                "INSERT INTO runs (id, name, spec, data_hash, created, executor) VALUES (?, ?, ?, ?, ?, ?)",
                (run_id, name, json.dumps(spec), data_hash, now, executor),
            )
            self.conn.executemany(
                "INSERT INTO steps (run_id, idx, model, method, title, updated) VALUES (?, ?, ?, ?, ?, ?)",
                [(run_id, i, s["model"], s["method"], s["title"], now) for i, s in enumerate(steps)],
            )
        return run_id

    def runs(self, limit: int | None = None) -> list[RunView]:
        """All runs, newest first, with their steps (without curves: `run`)."""
        runs = self.conn.execute("SELECT * FROM runs ORDER BY id DESC" + (f" LIMIT {int(limit)}" if limit else "")).fetchall()
        steps: dict[int, list] = {}
        for s in self.conn.execute("SELECT * FROM steps ORDER BY run_id, idx"):
            steps.setdefault(s["run_id"], []).append(s)
        return [RunView.from_rows(r, steps.get(r["id"], []), str(database.log_path(r["id"]))) for r in runs]

    def run(self, run_id: int) -> RunView:
        """One run with its steps and their curves; ClinBenchError if there is no such run."""
        run = self.conn.execute("SELECT * FROM runs WHERE id = ?", (int(run_id),)).fetchone()
        if run is None:
            raise ClinBenchError(f"There is no run {run_id}. `python -m engine runs` lists the runs.")
        steps = self.conn.execute("SELECT * FROM steps WHERE run_id = ? ORDER BY idx", (int(run_id),)).fetchall()
        return RunView.from_rows(run, steps, str(database.log_path(run_id)), self._metrics(run_id))

    def _metrics(self, run_id: int) -> dict[int, dict]:
        out: dict[int, dict] = {}
        rows = self.conn.execute("SELECT idx, name, step, value FROM metrics WHERE run_id = ? ORDER BY idx, name, step, t", (int(run_id),))
        for r in rows:
            out.setdefault(r["idx"], {}).setdefault(r["name"], []).append([r["step"], r["value"]])
        return out

    def request_cancel(self, run_id: int) -> None:
        """Raise the run's cancel flag (its queued steps are `move`d by the caller; running ones read the flag)."""
        with self._writing(durable=True):
            self.conn.execute("UPDATE runs SET cancel_requested = ? WHERE id = ?", (time.time(), int(run_id)))

    def clear_cancel(self, run_id: int) -> None:
        with self._writing(durable=True):
            self.conn.execute("UPDATE runs SET cancel_requested = NULL WHERE id = ?", (int(run_id),))

    def cancel_requested(self, run_id: int) -> float | None:
        """When the user asked to cancel the run, or None; a run no longer in the store counts as cancelled (at 0.0)."""
        row = self.conn.execute("SELECT cancel_requested FROM runs WHERE id = ?", (int(run_id),)).fetchone()
        return 0.0 if row is None else row["cancel_requested"]

    def cancel_requests(self) -> dict[int, float]:
        """Run id -> when a cancel was asked, for every run whose cancel flag is up."""
        return {
            r["id"]: r["cancel_requested"]
            for r in self.conn.execute("SELECT id, cancel_requested FROM runs WHERE cancel_requested IS NOT NULL")
        }

    def delete_run(self, run_id: int) -> None:
        """Forget a run, its steps and its curves (the caller checks that it is final)."""
        with self._writing(durable=True):
            for table in ("metrics", "steps"):
                self.conn.execute(f"DELETE FROM {table} WHERE run_id = ?", (int(run_id),))
            self.conn.execute("DELETE FROM runs WHERE id = ?", (int(run_id),))

    def run_input(self, run_id: int) -> tuple[str, str]:
        """(spec JSON, data hash) of a run, as submitted: what its steps execute."""
        row = self.conn.execute("SELECT spec, data_hash FROM runs WHERE id = ?", (int(run_id),)).fetchone()
        if row is None:
            raise ClinBenchError(f"There is no run {run_id}. `python -m engine runs` lists the runs.")
        return row["spec"], row["data_hash"]

    # --- steps: moves between states -------------------------------------------------------

    def move(
        self,
        run_id: int,
        idx: int,
        to: Status,
        *,
        expect: Status | Collection[Status],
        worker=_ANY,
        node: str | None = None,
        stage: str = "starting",
        error: str | None = None,
        result: dict | None = None,
    ) -> Status | None:
        """Move step `idx` of run `run_id` to state `to`, if it is in `expect` (one state or several) and, when `worker` is
        given for a move other than a claim, running under that worker's pid; otherwise another writer came first and
        nothing is written (None). A move states.TRANSITIONS does not list raises IllegalTransition.

        Columns written with the new state: running (a claim by `worker`, on `node`, at `stage`): an attempt more, its start,
        progress and curves cleared; queued (resume): the last attempt cleared; a final state: `error`, `result`, the end,
        progress complete when done. Returns the run's state as derived from its steps after the move."""
        expected = {Status(expect)} if isinstance(expect, str) else set(expect)
        to = Status(to)
        with self._writing(durable=to != Status.RUNNING):
            row = self.conn.execute("SELECT status, worker_pid FROM steps WHERE run_id = ? AND idx = ?", (run_id, idx)).fetchone()
            if row is None:
                raise ClinBenchError(f"Run {run_id} has no step {idx + 1}. `python -m engine runs show {run_id}` lists its steps.")
            now = time.time()
            claim = to == Status.RUNNING
            if row["status"] not in expected or (not claim and worker is not _ANY and row["worker_pid"] != worker):
                return None
            check_transition(row["status"], to, where=f"step {idx + 1} of run {run_id}")
            if claim:
                self.conn.execute(
                    "UPDATE steps SET status = ?, worker_pid = ?, step_pid = NULL, node = ?, started = ?, updated = ?, finished = NULL, "
                    "attempts = attempts + 1, stage = ?, done = 0, total = 0, rate = NULL, eta_s = NULL WHERE run_id = ? AND idx = ? AND status = ?",
                    (to, worker, node, now, now, stage, run_id, idx, row["status"]),
                )
                # a new attempt draws its curves afresh (a training resumed from a checkpoint logs its earlier points again)
                self.conn.execute("DELETE FROM metrics WHERE run_id = ? AND idx = ?", (run_id, idx))
            elif to == Status.QUEUED:
                self.conn.execute(
                    "UPDATE steps SET status = ?, done = 0, total = 0, stage = '', rate = NULL, eta_s = NULL, started = NULL, finished = NULL, "
                    "error = NULL, result = NULL, worker_pid = NULL, step_pid = NULL, node = NULL, updated = ? WHERE run_id = ? AND idx = ? AND status = ?",
                    (to, now, run_id, idx, row["status"]),
                )
            else:
                self.conn.execute(
                    "UPDATE steps SET status = ?, error = ?, result = ?, finished = ?, updated = ?, eta_s = NULL, "
                    "done = CASE WHEN ? THEN total ELSE done END WHERE run_id = ? AND idx = ? AND status = ?",
                    (
                        to,
                        error,
                        json.dumps(result) if result is not None else None,
                        now,
                        now,
                        to == Status.DONE,
                        run_id,
                        idx,
                        row["status"],
                    ),
                )
            return run_status(self.step_states(run_id).values())

    # --- steps: what a running step reports ------------------------------------------------

    def write_progress(self, run_id: int, idx: int, done: int, total: int, stage: str, rate: float | None, eta_s: float | None) -> None:
        """One progress report into the step's row (while it runs)."""
        self.conn.execute(
            "UPDATE steps SET done = ?, total = ?, stage = ?, rate = ?, eta_s = ?, updated = ? WHERE run_id = ? AND idx = ? AND status = ?",
            (done, total, stage, rate, eta_s, time.time(), run_id, idx, Status.RUNNING),
        )

    def write_metric(self, run_id: int, idx: int, name: str, value: float, step: int, t: float | None = None) -> None:
        """One point of a training curve (the Runs page draws them while the step runs)."""
        self.conn.execute(
            "INSERT INTO metrics (run_id, idx, name, step, value, t) VALUES (?, ?, ?, ?, ?, ?)",
            (run_id, idx, name, int(step), float(value), t or time.time()),
        )

    def set_step_pid(self, run_id: int, idx: int, pid: int) -> None:
        """The process that executes the running step (the local worker's child)."""
        self.conn.execute("UPDATE steps SET step_pid = ? WHERE run_id = ? AND idx = ? AND status = ?", (pid, run_id, idx, Status.RUNNING))

    def set_started_on(self, run_id: int, idx: int, node: str, pid: int, t: float) -> None:
        """Where and when the running step's task started (a Ray node and worker process)."""
        self.conn.execute(
            "UPDATE steps SET node = ?, step_pid = ?, started = ?, stage = 'starting', updated = ? WHERE run_id = ? AND idx = ? AND status = ?",
            (node, pid, t, time.time(), run_id, idx, Status.RUNNING),
        )

    def count_retry(self, run_id: int, idx: int) -> None:
        """One attempt more for a running step that its executor started again (a Ray task whose worker process died)."""
        self.conn.execute("UPDATE steps SET attempts = attempts + 1 WHERE run_id = ? AND idx = ?", (run_id, idx))

    # --- steps: what executors ask ------------------------------------------------------------

    def step_title(self, run_id: int, idx: int) -> tuple[str, int]:
        """(title of the step, number of steps in its run)."""
        row = self.conn.execute(
            "SELECT title, (SELECT COUNT(*) FROM steps WHERE run_id = ?) AS n FROM steps WHERE run_id = ? AND idx = ?",
            (run_id, run_id, idx),
        ).fetchone()
        return row["title"], row["n"]

    def outcome(self, run_id: int, idx: int) -> tuple[Status, str | None, dict]:
        """(state, error, result) of a step as recorded."""
        row = self.conn.execute("SELECT status, error, result FROM steps WHERE run_id = ? AND idx = ?", (run_id, idx)).fetchone()
        return Status(row["status"]), row["error"], json.loads(row["result"]) if row["result"] else {}

    def claimed_by(self, run_id: int, idx: int, worker_pid: int) -> tuple[str, str] | None:
        """(spec JSON, data hash) of the step if it is running under `worker_pid`, else None."""
        row = self.conn.execute(
            "SELECT s.status, s.worker_pid, r.spec, r.data_hash FROM steps s JOIN runs r ON r.id = s.run_id WHERE s.run_id = ? AND s.idx = ?",
            (run_id, idx),
        ).fetchone()
        if row is None or row["status"] != Status.RUNNING or row["worker_pid"] != worker_pid:
            return None
        return row["spec"], row["data_hash"]

    def next_queued(self, executor: str) -> tuple[int, int] | None:
        """(run, step) of the first queued step of the oldest run for `executor` that has one (runs not being cancelled)."""
        row = self.conn.execute(
            "SELECT s.run_id, s.idx FROM steps s JOIN runs r ON r.id = s.run_id "
            "WHERE s.status = ? AND r.cancel_requested IS NULL AND r.executor = ? ORDER BY s.run_id, s.idx LIMIT 1",
            (Status.QUEUED, executor),
        ).fetchone()
        return (row["run_id"], row["idx"]) if row else None

    def queued_steps(self, executor: str) -> list[tuple[int, int, str]]:
        """(run, step, the run's spec JSON) of every queued step of the runs for `executor` not being cancelled, oldest first."""
        rows = self.conn.execute(
            "SELECT s.run_id, s.idx, r.spec FROM steps s JOIN runs r ON r.id = s.run_id "
            "WHERE s.status = ? AND r.executor = ? AND r.cancel_requested IS NULL ORDER BY s.run_id, s.idx",
            (Status.QUEUED, executor),
        ).fetchall()
        return [(r["run_id"], r["idx"], r["spec"]) for r in rows]

    def step_states(self, run_id: int) -> dict[int, Status]:
        """Each step's state in a run, by index."""
        return {r["idx"]: Status(r["status"]) for r in self.conn.execute("SELECT idx, status FROM steps WHERE run_id = ?", (int(run_id),))}

    def queued(self, executor: str) -> int:
        """Steps waiting for an executor of this kind (runs not being cancelled)."""
        return self.conn.execute(
            "SELECT COUNT(*) FROM steps s JOIN runs r ON r.id = s.run_id WHERE s.status = ? AND r.cancel_requested IS NULL AND r.executor = ?",
            (Status.QUEUED, executor),
        ).fetchone()[0]

    def busy(self) -> bool:
        """Whether any step is queued or running."""
        return (
            self.conn.execute("SELECT 1 FROM steps WHERE status IN (?, ?) LIMIT 1", (Status.QUEUED, Status.RUNNING)).fetchone() is not None
        )

    def finished_steps(self, limit: int) -> list[tuple]:
        """(model, method, started, finished, result JSON, spec JSON) of the `limit` most recently finished, done steps."""
        return self.conn.execute(
            "SELECT s.model, s.method, s.started, s.finished, s.result, r.spec FROM steps s JOIN runs r ON r.id = s.run_id "
            "WHERE s.status = ? AND s.started IS NOT NULL AND s.finished IS NOT NULL AND s.result IS NOT NULL "
            "ORDER BY s.finished DESC LIMIT ?",
            (Status.DONE, limit),
        ).fetchall()

    # --- workers ---------------------------------------------------------------------------

    def alive_workers(self, kind: str | None = None) -> list[dict]:
        """Registered workers whose process is alive on this host (of one kind, an executor of options.EXECUTORS, when given)."""
        host = socket.gethostname()
        return [
            dict(r)
            for r in self.conn.execute("SELECT * FROM workers ORDER BY started")
            if r["host"] == host and process_alive(r["pid"], r["create_time"]) and kind in (None, r["kind"])
        ]

    def register_worker(self, kind: str, limit: int) -> list[int]:
        """In one transaction: register this process as a live worker of `kind` and return [], or, when `limit` workers of that
        kind already serve this store, register nothing and return their pids (this process should then leave)."""
        import psutil

        me = psutil.Process()
        with self.transaction():
            others = [w["pid"] for w in self.alive_workers(kind) if w["pid"] != me.pid]
            if len(others) >= limit:
                return others
            now = time.time()
            self.conn.execute(
                "INSERT OR REPLACE INTO workers (pid, create_time, host, started, heartbeat, kind) VALUES (?, ?, ?, ?, ?, ?)",
                (me.pid, me.create_time(), socket.gethostname(), now, now, kind),
            )
        return []

    def heartbeat(self, pid: int) -> None:
        self.conn.execute("UPDATE workers SET heartbeat = ? WHERE pid = ?", (time.time(), pid))

    def deregister(self, pid: int) -> None:
        self.conn.execute("DELETE FROM workers WHERE pid = ?", (pid,))

    def leave_if_idle(self, pid: int, executor: str) -> bool:
        """Deregister, unless something was queued for `executor` meanwhile (checked in the same transaction as submissions
        write). True if the worker left."""
        with self.transaction():
            if self.queued(executor):
                return False
            self.deregister(pid)
        return True

    def running_under(self, pid: int) -> list[dict]:
        """The steps running under a worker: run_id, idx, title each."""
        rows = self.conn.execute(
            "SELECT run_id, idx, title FROM steps WHERE status = ? AND worker_pid = ? ORDER BY run_id, idx", (Status.RUNNING, pid)
        ).fetchall()
        return [dict(r) for r in rows]

    def recover(self) -> list[tuple[int, int]]:
        """Mark the running steps of dead workers `interrupted` and forget those workers. Returns (run, step) pairs."""
        running = self.conn.execute("SELECT run_id, idx, worker_pid FROM steps WHERE status = ?", (Status.RUNNING,)).fetchall()
        workers = {r["pid"]: r for r in self.conn.execute("SELECT * FROM workers")}
        host = socket.gethostname()
        dead_workers = [pid for pid, r in workers.items() if r["host"] == host and not process_alive(pid, r["create_time"])]
        dead_steps = [
            (r["run_id"], r["idx"], r["worker_pid"]) for r in running if r["worker_pid"] not in workers or r["worker_pid"] in dead_workers
        ]
        if not dead_steps and not dead_workers:
            return []
        with self.transaction(durable=True):
            for run_id, idx, pid in dead_steps:
                self.move(
                    run_id,
                    idx,
                    Status.INTERRUPTED,
                    expect=Status.RUNNING,
                    worker=pid,
                    error=(
                        f"The worker (pid {pid}) stopped while this step ran (killed, crashed, or the machine "
                        f"went down). Resume the run to do this step again."
                    ),
                )
            for pid in dead_workers:
                self.deregister(pid)
        for run_id, idx, pid in dead_steps:
            database.append_log(run_id, f"step {idx + 1}: interrupted (worker pid {pid} is gone)")
        return [(r, i) for r, i, _ in dead_steps]
