"""Background runs: what the CLI and the dashboard do with the run store.

A run is an experiment spec expanded into steps (one per model x method). The dashboard and the
CLI only submit and read; steps execute in worker processes (engine.runs.worker), started on demand.
States are engine.runs.states.Status: a step moves queued -> running -> done | failed | cancelled |
interrupted; `resume` queues the restartable ones again and finished steps keep their results.
Reads return engine.runs.view.RunView, the one view of a run every reader shares. Every read and write goes
through the run store (engine.runs.store.runstore.RunStore); state changes through its `move`.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

from engine.errors import ClinBenchError
from engine.runs.launch import check_ray, ensure_worker
from engine.runs.states import RESTARTABLE, Status
from engine.runs.store import database
from engine.runs.store.runstore import open_store
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
    with open_store() as rs:
        run_id = rs.add_run(spec.name, spec.to_dict(), dataset.data_hash, spec.options.execution.executor, steps)
    database.append_log(
        run_id,
        f"run {run_id} '{spec.name}' submitted: {len(steps)} step(s), {len(dataset)} letters from {spec.data.path} "
        f"(data hash {dataset.data_hash[:12]}), executor {spec.options.execution.executor}",
    )
    if start_worker:
        ensure_worker()
    return run_id


def list_runs(limit: int | None = None) -> list[RunView]:
    """All runs, newest first, with their steps (curves: `get_run`)."""
    with open_store() as rs:
        rs.recover()
        return rs.runs(limit)


def get_run(run_id: int) -> RunView:
    """One run with its spec, steps and their curves; ClinBenchError if there is no such run."""
    with open_store() as rs:
        rs.recover()
        return rs.run(run_id)


def cancel(run_id: int) -> RunView:
    """Ask a run to stop: queued steps are cancelled now; a running step stops at its next batch boundary
    (within a few seconds, else its worker terminates the step's process). Returns the run."""
    with open_store() as rs:
        with rs.transaction(durable=True):
            run = rs.run(run_id)
            if run.status.final:
                return run
            rs.request_cancel(run_id)
            for s in run.steps:
                rs.move(run_id, s.index, Status.CANCELLED, expect=Status.QUEUED, error="Cancelled before it started.")
        database.append_log(run_id, "cancel requested")
        return rs.run(run_id)


def resume(run_id: int, *, start_worker: bool = True) -> RunView:
    """Queue the interrupted, cancelled and failed steps of a run again; finished steps stay as they are."""
    with open_store() as rs:
        rs.recover()
        with rs.transaction(durable=True):
            run = rs.run(run_id)
            if run.status == Status.RUNNING or any(s.status == Status.RUNNING for s in run.steps):
                raise ClinBenchError(
                    f"Run {run_id} is still running; wait for it to finish, or cancel it first (`python -m engine runs cancel {run_id}`)."
                )
            again = [s.index for s in run.steps if s.status.restartable]
            rs.clear_cancel(run_id)
            for idx in again:
                rs.move(run_id, idx, Status.QUEUED, expect=RESTARTABLE)
        database.append_log(run_id, f"resumed: step(s) {', '.join(str(i + 1) for i in again) or 'none'} queued again")
        run = rs.run(run_id)
    if start_worker and again:
        ensure_worker()
    return run


def delete(run_id: int) -> None:
    """Forget a finished run, its curves and its log. Its artifacts stay in the cache (other runs may share them)."""
    with open_store() as rs:
        rs.recover()
        with rs.transaction(durable=True):
            run = rs.run(run_id)
            if not run.status.final:
                raise ClinBenchError(
                    f"Run {run_id} is {run.status}; cancel it first (`python -m engine runs cancel {run_id}`), then delete it."
                )
            rs.delete_run(run_id)
    with contextlib.suppress(FileNotFoundError):
        database.log_path(run_id).unlink()


def read_log(run_id: int) -> str:
    get_run(run_id)  # a clear error for an unknown id
    try:
        return database.log_path(run_id).read_text(encoding="utf-8", errors="replace")
    except FileNotFoundError:
        return ""


def wake_workers() -> list[str]:
    """Start the executors that queued steps wait for when none is running (a worker was killed, or left before taking
    them): one line for each started, saying so, for whatever lists runs to show (the CLI's `runs`, the Runs page)."""
    try:
        return [started.message for started in ensure_worker()]
    except ClinBenchError as exc:  # e.g. CLINBENCH_WORKERS is not a number: the runs are still listed
        return [f"Queued steps may be waiting: no worker could be started ({exc})"]


def workers() -> list[dict]:
    """Live workers (kind: local, or the Ray driver) with what each is doing: `steps` running under it (a Ray driver has
    several at once), `step` the first of them (for the dashboard's worker status)."""
    with open_store() as rs:
        rs.recover()
        out = rs.alive_workers()
        for w in out:
            w["steps"] = rs.running_under(w["pid"])
            w["step"] = w["steps"][0] if w["steps"] else None
    return out


def busy() -> bool:
    """Whether any step is queued or running (the dashboard's background work waits for it; False if the store cannot be read)."""
    try:
        with open_store() as rs:
            return rs.busy()
    except (database.Error, ClinBenchError):
        return False
