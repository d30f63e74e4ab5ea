"""One step, called where it runs, whichever executor sent it (the local worker's child process, a Ray task).

* `call(spec_json, data_hash, idx, ctx, where)`: parse the stored spec, load its letters, refuse them if their content
  changed since submission, execute the step and turn what happened into an outcome: `{"status": done, "result": ...}`,
  or failed / cancelled with one line a user understands (the traceback goes to stdout, which is the run log).
  A BaseException (the worker's SIGTERM, Ray's cancel) is not an outcome: it propagates.
* `Rate`: progress(done, total, stage) throttled to one report per PROGRESS_EVERY_S (and every new stage and its first
  step forward), with the stage's rate and ETA.
* `record(rs, run_id, idx, outcome, worker_pid)`: the outcome into the run store (RunStore.move, one durable transaction),
  only if the step is still running under that worker (a cancel or a recovery that came first wins); `end_line` is its
  run-log line.
* `Stop`: the stop flag that SIGTERM/SIGINT set in the process that serves steps (the local worker, the Ray driver).
"""

from __future__ import annotations

import json
import signal
import time
import traceback
from collections.abc import Callable
from typing import TYPE_CHECKING

from engine.cache.context import StepContext
from engine.errors import Cancelled, ClinBenchError
from engine.evaluation import headline
from engine.runs.states import Status

if TYPE_CHECKING:  # (a Ray task imports this module; only the driver opens the store)
    from engine.runs.store.runstore import RunStore

PROGRESS_EVERY_S = 0.5


class Stop:
    """SIGTERM/SIGINT in a process that serves steps (the local worker, the Ray driver): `install()` makes them set
    `requested` (and `signal_name`) instead of killing it, so it can mark what it was running and leave cleanly."""

    requested = False
    signal_name = ""

    @classmethod
    def install(cls) -> None:
        def on_signal(signum, _frame) -> None:
            cls.requested, cls.signal_name = True, signal.Signals(signum).name

        signal.signal(signal.SIGTERM, on_signal)
        signal.signal(signal.SIGINT, on_signal)


def call(spec_json: str, data_hash: str, idx: int, ctx: StepContext, where: str) -> dict:
    """Execute step `idx` of a stored spec; the outcome dict (status, result | error)."""
    try:
        from engine.cache import artifacts
        from engine.features import extract
        from engine.runs import experiment

        spec = experiment.parse_stored_spec(json.loads(spec_json), where=where)
        dataset = spec.data.load()
        if dataset.data_hash != data_hash:
            raise ClinBenchError(
                f"The data file {spec.data.path} changed after this run was submitted (its content hash differs), "
                "so results would not match the run. Submit the run again to use the new content."
            )
        res = experiment.execute(spec, spec.steps()[idx], dataset=dataset, ctx=ctx)
        return {"status": Status.DONE, "result": {**artifacts.summary(res), "forward_passes": extract.FORWARD_PASSES}}
    except Cancelled as exc:
        return {"status": Status.CANCELLED, "error": str(exc)}
    except ClinBenchError as exc:
        traceback.print_exc()
        return {"status": Status.FAILED, "error": str(exc)}
    except MemoryError:
        traceback.print_exc()
        return {"status": Status.FAILED, "error": "Ran out of memory. Try a smaller max_length or batch_tokens, or a smaller model."}
    except Exception as exc:  # any bug or library error: the user gets one line, the log the traceback
        traceback.print_exc()
        first = (str(exc).strip().splitlines() or [""])[0][:300]
        return {"status": Status.FAILED, "error": f"Unexpected error: {type(exc).__name__}: {first} (the traceback is in the run log)."}


class Rate:
    """progress(done, total, stage) -> write(done, total, stage, rate, eta_s), at most every PROGRESS_EVERY_S (and on every new
    stage, on its first step forward, and at the end of one): a slow first batch shows as soon as it is done, not one
    batch later."""

    def __init__(self, write: Callable[[int, int, str, float | None, float | None], None]):
        self.write = write
        self.stage, self.t_stage, self.done0, self.t_write, self.moved = None, 0.0, 0, 0.0, False

    def __call__(self, done: int, total: int, stage: str) -> None:
        now = time.monotonic()
        if stage != self.stage:
            self.stage, self.t_stage, self.done0, self.moved = stage, now, done, False
        elif now - self.t_write < PROGRESS_EVERY_S and done < total and (self.moved or done == self.done0):
            return
        self.moved = self.moved or done > self.done0
        elapsed = now - self.t_stage
        rate = (done - self.done0) / elapsed if elapsed > 0.2 and done > self.done0 else None
        self.write(done, total, stage, rate, (total - done) / rate if rate else None)
        self.t_write = now


def end_line(status: str, error: str | None, result: dict) -> str:
    """What the run log says after `step i/n <status>`: the error, or the score (and whether it came from the cache)."""
    if error:
        return f": {error}"
    if "macro_f1" in result:
        name, value, _ = headline.of(result)  # the task's headline: macro-F1, or micro-F1 for several labels per letter
        return f": {name} {value:.3f}" + (" (cached)" if result.get("cache_hit") else "")
    return ""


def record(rs: RunStore, run_id: int, idx: int, outcome: dict, worker_pid: int) -> bool:
    """Write a step's outcome (RunStore.move, durable); False if the step was no longer running under `worker_pid`."""
    moved = rs.move(
        run_id,
        idx,
        Status(outcome["status"]),
        expect=Status.RUNNING,
        worker=worker_pid,
        error=outcome.get("error"),
        result=outcome.get("result"),
    )
    return moved is not None
