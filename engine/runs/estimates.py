"""How long a run will take, said before it starts, from this machine's own history.

A finished step that computed its result (not a cache hit) tells how many seconds one letter took per
fit: its duration / (letters x fits), where fits are the trainings its protocol made (cv: one per fold,
plus the refit on every letter; holdout: one). A new step of the same model and method is estimated as
the median of those rates x its letters x its fits. With no such step on this machine there is no
figure, and the estimate says so rather than guess. Steps that reused cached embeddings are left out of the
rates, so a run whose embeddings are cached finishes sooner than estimated.
"""

from __future__ import annotations

import json
import statistics
from dataclasses import dataclass

from engine.protocols import plans
from engine.runs.experiment import Spec
from engine.runs.store.runstore import open_store

HISTORY_STEPS = 2000  # the most recent finished steps read for rates


@dataclass(frozen=True)
class StepEstimate:
    title: str
    seconds: float | None  # None: no finished step of this model and method on this machine
    basis: str  # what the figure rests on, in words


def fits(result_or_plan) -> int:
    """Trainings behind a result (a step's stored result dict) or a plans.Plan: cv folds + the refit, or 1."""
    if isinstance(result_or_plan, dict):
        folds = result_or_plan.get("folds")
        return len(folds) + 1 if result_or_plan.get("protocol") == "cv" and folds else 1
    return len(result_or_plan.folds) + 1 if result_or_plan.name == "cv" else 1


def rates() -> dict[tuple[str, str], list[tuple[float, int | None]]]:
    """(seconds per letter per fit, max_length) of every finished, computed step in the store, by (model, method)."""
    out: dict[tuple[str, str], list[tuple[float, int | None]]] = {}
    with open_store() as rs:
        rows = rs.finished_steps(HISTORY_STEPS)
    for model, method, started, finished, result, spec in rows:
        try:
            res, options = json.loads(result), (json.loads(spec).get("options") or {})
        except (ValueError, AttributeError):
            continue
        n = res.get("n_letters")
        if res.get("cache_hit") or res.get("embed_cache_hit") or not n or finished <= started:
            continue
        length = options.get("max_length") if isinstance(options, dict) else None
        out.setdefault((model, method), []).append(((finished - started) / (n * fits(res)), length))
    return out


def estimate(spec: Spec) -> list[StepEstimate]:
    """One estimate per step of `spec`, in order."""
    ds = spec.data.load()
    history = rates()
    out = []
    for step in spec.steps():
        model, method = step["model"], step["method"]
        found = history.get((model, method), [])
        n_fits = fits(plans.plan(ds, spec.options.protocol, method))
        if not found:
            out.append(StepEstimate(step["title"], None, f"no finished {model} · {method} step on this machine yet"))
            continue
        length = spec.options.embedding.max_length
        same = [rate for rate, ml in found if ml in (None, length)]  # letters cut at another length took another time
        seconds = statistics.median(same or [rate for rate, _ in found]) * len(ds) * n_fits
        basis = f"{len(same or found)} earlier step(s) on this machine; {len(ds)} letters × {n_fits} fit(s)"
        out.append(StepEstimate(step["title"], seconds, basis if same else f"{basis}; those read letters at another max_length"))
    return out
