"""One view of a run: its steps, progress, ETA, results and curves, as every reader sees it.

`RunView` and `StepView` are built from the run store's rows (RunStore.runs / .run read them); `to_dict()` is
the JSON of `python -m engine runs show --json` (keys: id, name, status, created, started, finished,
cancel_requested, worker_pid, executor, counts, n_steps, fraction, steps, log, spec, data_hash; each step: index,
title, model, method, status, progress, error, result, started, finished, seconds, attempts,
worker_pid, step_pid, node, metrics). `executor` is local or ray; a step's `node` is the machine that ran it. `StepView.detail` is the one-line summary the CLI and the Runs page
both print.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path

from engine.evaluation import headline
from engine.runs.states import Status, run_status

_STAGE_WORDS = {"": "starting", "starting": "starting: loading the model and the letters"}  # before the first count


def fmt_duration(seconds: float | None) -> str:
    """12 s, 3 min 05 s, 1 h 02 min."""
    if seconds is None:
        return ""
    s = int(round(seconds))
    if s >= 3600:
        return f"{s // 3600} h {s % 3600 // 60:02d} min"
    return f"{s // 60} min {s % 60:02d} s" if s >= 60 else f"{s} s"


@dataclass
class StepView:
    index: int
    title: str
    model: str
    method: str
    status: Status
    progress: dict  # done, total, stage, rate, eta_s
    error: str | None
    result: dict | None
    started: float | None
    finished: float | None
    seconds: float | None
    attempts: int
    worker_pid: int | None
    step_pid: int | None
    node: str | None = None  # the machine (host name, or Ray node address) that ran or runs it
    metrics: dict[str, list[list[float]]] = field(default_factory=dict)  # name -> [[step, value], ...]

    @classmethod
    def from_row(cls, r, now: float, metrics: dict | None = None) -> StepView:
        running = r["status"] == Status.RUNNING
        return cls(
            index=r["idx"],
            title=r["title"],
            model=r["model"],
            method=r["method"],
            status=Status(r["status"]),
            progress={"done": r["done"], "total": r["total"], "stage": r["stage"], "rate": r["rate"], "eta_s": r["eta_s"]},
            error=r["error"],
            result=json.loads(r["result"]) if r["result"] else None,
            started=r["started"],
            finished=r["finished"],
            seconds=round((r["finished"] or now) - r["started"], 2) if r["started"] else None,
            attempts=r["attempts"],
            worker_pid=r["worker_pid"] if running else None,
            step_pid=r["step_pid"] if running else None,
            node=r["node"],
            metrics=metrics or {},
        )

    @property
    def fraction(self) -> float:
        """How far the step is: 1 when finished, else done/total of its current stage."""
        if self.status == Status.DONE:
            return 1.0
        p = self.progress
        return min(1.0, max(0.0, p["done"] / p["total"])) if p["total"] and self.status == Status.RUNNING else 0.0

    @property
    def detail(self) -> str:
        """One line: the result of a finished step, the stage/rate/ETA of a running one, the error of a failed one."""
        r, p = self.result or {}, self.progress
        if self.status == Status.DONE and "macro_f1" in r:
            n = f", {r['protocol']}, n={r['n_scored']}" if "n_scored" in r else ""
            line = headline.text(r)  # the task's headline: macro-F1, or micro-F1 for several labels per letter
            line = line[:-1] + f"{n})" if line.endswith(")") else line + (f" ({n[2:]})" if n else "")
            return line + (" · cached" if r.get("cache_hit") else "")
        if self.status == Status.DONE and "perplexity_after" in r:
            return f"held-out perplexity {r['perplexity_before']:.1f} → {r['perplexity_after']:.1f}; new model {r['adapted_model']}"
        if self.status == Status.RUNNING:
            text = f"{p['stage']} {p['done']}/{p['total']}" if p["total"] else _STAGE_WORDS.get(p["stage"], p["stage"])
            if p["rate"]:
                text += f" · {p['rate']:.1f}/s"
            if p["eta_s"] is not None:
                text += f" · ETA {fmt_duration(p['eta_s'])}"
            return text
        if self.status == Status.QUEUED:
            return "waits for a worker"
        return self.error or ""

    def to_dict(self) -> dict:
        return {
            "index": self.index,
            "title": self.title,
            "model": self.model,
            "method": self.method,
            "status": str(self.status),
            "progress": self.progress,
            "error": self.error,
            "result": self.result,
            "started": self.started,
            "finished": self.finished,
            "seconds": self.seconds,
            "attempts": self.attempts,
            "worker_pid": self.worker_pid,
            "step_pid": self.step_pid,
            "node": self.node,
            "metrics": self.metrics,
        }


@dataclass
class RunView:
    id: int
    name: str
    status: Status
    created: float
    started: float | None
    finished: float | None
    cancel_requested: bool
    worker_pid: int | None
    steps: list[StepView]
    log: str
    spec: dict
    data_hash: str
    executor: str = "local"  # options.EXECUTORS

    @classmethod
    def from_rows(cls, run, steps: list, log: str, metrics: dict[int, dict] | None = None) -> RunView:
        now = time.time()
        views = [StepView.from_row(s, now, (metrics or {}).get(s["idx"])) for s in steps]
        status = run_status(v.status for v in views)
        starts = [v.started for v in views if v.started]
        return cls(
            id=run["id"],
            name=run["name"],
            status=status,
            created=run["created"],
            started=min(starts) if starts else None,
            finished=max((v.finished or 0) for v in views) if status.final and starts else None,
            cancel_requested=run["cancel_requested"] is not None,
            worker_pid=next((v.worker_pid for v in views if v.status == Status.RUNNING), None),
            steps=views,
            log=log,
            spec=json.loads(run["spec"]),
            data_hash=run["data_hash"],
            executor=run["executor"],
        )

    @property
    def counts(self) -> dict[str, int]:
        return {str(state): sum(s.status == state for s in self.steps) for state in Status}

    @property
    def fraction(self) -> float:
        """Share of the run's work done: finished steps count whole, the running step by its progress."""
        if not self.steps:
            return 0.0
        return sum(1.0 if s.status.final else s.fraction for s in self.steps) / len(self.steps)

    @property
    def artifacts(self) -> set[str]:
        """The keys (folder names) of the artifacts its finished steps produced."""
        return {Path(s.result["artifact"]).name for s in self.steps if s.result and s.result.get("artifact")}

    def to_dict(self) -> dict:
        return {
            "id": self.id,
            "name": self.name,
            "status": str(self.status),
            "created": self.created,
            "started": self.started,
            "finished": self.finished,
            "cancel_requested": self.cancel_requested,
            "worker_pid": self.worker_pid,
            "executor": self.executor,
            "counts": self.counts,
            "n_steps": len(self.steps),
            "fraction": round(self.fraction, 4),
            "steps": [s.to_dict() for s in self.steps],
            "log": self.log,
            "spec": self.spec,
            "data_hash": self.data_hash,
        }
