"""Background runs: what the CLI and the dashboard do with the run store.

A run is an experiment spec expanded into steps (one per model x method). The dashboard and the
CLI only submit and read; steps execute in worker processes (engine.worker), started on demand.
States are engine.runs.states.Status: a step moves queued -> running -> done | failed | cancelled |
interrupted; `resume` queues the restartable ones again and finished steps keep their results.
Reads return engine.runs.view.RunView, the one view of a run every reader shares.
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
import time
from pathlib import Path

from engine.errors import ClinBenchError
from engine.runs.launch import check_ray, ensure_worker
from engine.runs.states import RESTARTABLE, Status, sql_list
from engine.runs.store import alive_workers, append_log, connect, log_path, new_run_id, recover, transaction
from engine.runs.view import RunView


def submit(spec, *, start_worker: bool = True) -> int:
    """Check an engine.runs.experiment.Spec (its data loads and validates, its model names resolve) and queue it. Returns the run id.

    Nothing is queued when the check fails; the error says what to fix.
    """
    from engine.methods.registry import KINDS, REFERENCE, require_task
    from engine.models import catalog
    from engine.protocols import plans
    from engine.runs.experiment import Spec  # (reading runs never loads the methods)

    if not isinstance(spec, Spec):
        raise ClinBenchError("submit() takes an engine.runs.experiment.Spec (see experiment.parse_spec / load_spec).")
    if spec.data.path != "default":
        spec.data.path = str(Path(spec.data.path).expanduser().resolve())
    dataset = spec.data.load()  # raises DataError with the validation report
    names = [name for name in spec.models if name != REFERENCE[0]]
    for name in names:  # unknown names, missing or damaged folders, hub ids that cannot be had (offline) fail now
        catalog.check_available(name)
    if spec.options.execution.executor == "ray":
        check_ray()  # ray not installed: refused now, with how to install it
    targets = spec.options.finetune.target_modules
    if targets and {"lora", "lora-svc", "domain-adapt", "adapt-svc", "instruct-lora"} & set(spec.methods):
        from engine.finetune.loading import check_targets_of

        for name in names:
            if catalog.resolve(name).source in ("local", "adapted") or name == "minilm":
                check_targets_of(name, targets)  # a module the architecture lacks fails now, not after the data is tokenised
    steps = spec.steps()
    letters = plans.prepare(dataset, spec.options.protocol)
    for method in dict.fromkeys(s["method"] for s in steps):
        require_task(method, letters)  # a multi-label dataset with a single-label method is refused now
    for method in {s["method"] for s in steps if KINDS[s["method"]].produces == "classifier"}:
        plans.plan(letters, spec.options.protocol, method)  # a class that some test fold would lack is refused now
    now = time.time()
    with connect() as conn, transaction(conn, durable=True):
        run_id = new_run_id(conn)  # never an id an earlier run had, even one the database lost
        conn.execute(
            "INSERT INTO runs (id, name, spec, data_hash, created, executor) VALUES (?, ?, ?, ?, ?, ?)",
            (run_id, spec.name, json.dumps(spec.to_dict()), dataset.data_hash, now, spec.options.execution.executor),
        )
        conn.executemany(
            "INSERT INTO steps (run_id, idx, model, method, title, updated) VALUES (?, ?, ?, ?, ?, ?)",
            [(run_id, i, s["model"], s["method"], s["title"], now) for i, s in enumerate(steps)],
        )
    append_log(
        run_id,
        f"run {run_id} '{spec.name}' submitted: {len(steps)} step(s), {len(dataset)} letters from {spec.data.path} "
        f"(data hash {dataset.data_hash[:12]}), executor {spec.options.execution.executor}",
    )
    if start_worker:
        ensure_worker()
    return run_id


def _metrics(conn: sqlite3.Connection, run_id: int) -> dict[int, dict]:
    out: dict[int, dict] = {}
    for r in conn.execute("SELECT idx, name, step, value FROM metrics WHERE run_id = ? ORDER BY idx, name, step, t", (int(run_id),)):
        out.setdefault(r["idx"], {}).setdefault(r["name"], []).append([r["step"], r["value"]])
    return out


def list_runs(limit: int | None = None) -> list[RunView]:
    """All runs, newest first, with their steps (curves: `get_run`)."""
    with connect() as conn:
        recover(conn)
        runs = conn.execute("SELECT * FROM runs ORDER BY id DESC" + (f" LIMIT {int(limit)}" if limit else "")).fetchall()
        steps: dict[int, list] = {}
        for s in conn.execute("SELECT * FROM steps ORDER BY run_id, idx"):
            steps.setdefault(s["run_id"], []).append(s)
    return [RunView.from_rows(r, steps.get(r["id"], []), str(log_path(r["id"]))) for r in runs]


def get_run(run_id: int) -> RunView:
    """One run with its spec, steps and their curves; ClinBenchError if there is no such run."""
    with connect() as conn:
        recover(conn)
        return _get(conn, run_id)


def _get(conn: sqlite3.Connection, run_id: int) -> RunView:
    run = conn.execute("SELECT * FROM runs WHERE id = ?", (int(run_id),)).fetchone()
    if run is None:
        raise ClinBenchError(f"There is no run {run_id}. `python -m engine runs` lists the runs.")
    steps = conn.execute("SELECT * FROM steps WHERE run_id = ? ORDER BY idx", (int(run_id),)).fetchall()
    return RunView.from_rows(run, steps, str(log_path(run_id)), _metrics(conn, run_id))


def cancel(run_id: int) -> RunView:
    """Ask a run to stop: queued steps are cancelled now; a running step stops at its next batch boundary
    (within a few seconds, else its worker terminates the step's process). Returns the run."""
    now = time.time()
    with connect() as conn:
        with transaction(conn, durable=True):
            run = _get(conn, run_id)
            if run.status.final:
                return run
            conn.execute("UPDATE runs SET cancel_requested = ? WHERE id = ?", (now, int(run_id)))
            conn.execute(
                "UPDATE steps SET status = ?, finished = ?, updated = ?, error = 'Cancelled before it started.' WHERE run_id = ? AND status = ?",
                (Status.CANCELLED, now, now, int(run_id), Status.QUEUED),
            )
        append_log(run_id, "cancel requested")
        return _get(conn, run_id)


def resume(run_id: int, *, start_worker: bool = True) -> RunView:
    """Queue the interrupted, cancelled and failed steps of a run again; finished steps stay as they are."""
    now = time.time()
    with connect() as conn:
        recover(conn)
        with transaction(conn, durable=True):
            run = _get(conn, run_id)
            if run.status == Status.RUNNING or any(s.status == Status.RUNNING for s in run.steps):
                raise ClinBenchError(
                    f"Run {run_id} is still running; wait for it to finish, or cancel it first (`python -m engine runs cancel {run_id}`)."
                )
            again = [s.index for s in run.steps if s.status.restartable]
            conn.execute("UPDATE runs SET cancel_requested = NULL WHERE id = ?", (int(run_id),))
            conn.execute(
                "UPDATE steps SET status = ?, done = 0, total = 0, stage = '', rate = NULL, eta_s = NULL, "
                "started = NULL, finished = NULL, error = NULL, result = NULL, worker_pid = NULL, step_pid = NULL, node = NULL, "
                f"updated = ? WHERE run_id = ? AND status IN {sql_list(RESTARTABLE)}",
                (Status.QUEUED, now, int(run_id)),
            )
        append_log(run_id, f"resumed: step(s) {', '.join(str(i + 1) for i in again) or 'none'} queued again")
        run = _get(conn, run_id)
    if start_worker and again:
        ensure_worker()
    return run


def delete(run_id: int) -> None:
    """Forget a finished run, its curves and its log. Its artifacts stay in the cache (other runs may share them)."""
    with connect() as conn:
        recover(conn)
        with transaction(conn, durable=True):
            run = _get(conn, run_id)
            if not run.status.final:
                raise ClinBenchError(
                    f"Run {run_id} is {run.status}; cancel it first (`python -m engine runs cancel {run_id}`), then delete it."
                )
            for table in ("metrics", "steps"):
                conn.execute(f"DELETE FROM {table} WHERE run_id = ?", (int(run_id),))
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
    """Live workers (kind: local, or the Ray driver) with what each is doing: `steps` running under it (a Ray driver has
    several at once), `step` the first of them (for the dashboard's worker status)."""
    with connect() as conn:
        recover(conn)
        out = alive_workers(conn)
        for w in out:
            rows = conn.execute(
                "SELECT run_id, idx, title FROM steps WHERE status = ? AND worker_pid = ? ORDER BY run_id, idx", (Status.RUNNING, w["pid"])
            ).fetchall()
            w["steps"] = [dict(r) for r in rows]
            w["step"] = w["steps"][0] if w["steps"] else None
    return out


def busy() -> bool:
    """Whether any step is queued or running (the dashboard's background work waits for it; False if the store cannot be read)."""
    try:
        with connect() as conn:
            return (
                conn.execute("SELECT 1 FROM steps WHERE status IN (?, ?) LIMIT 1", (Status.QUEUED, Status.RUNNING)).fetchone() is not None
            )
    except (sqlite3.Error, ClinBenchError):
        return False
