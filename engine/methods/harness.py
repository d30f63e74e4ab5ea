"""The harness every classifying method runs on: the one place that plans, caches, loops over folds, decides and scores.

`evaluate(method, dataset, model, opts, ctx)` is a step of any method (engine.methods.base):

1. the plan (engine.protocols.plans: folds, duplicate groups) and the leakage guard (a domain-adapted model never
   scores letters its adaptation read);
2. the cache key (`cache_key`: the method's own, plus what the harness decides) and the cache lookup: a sealed artifact
   under that key is the result, nothing is recomputed;
3. for each fold: the method fits on the fold's training letters, the fold's test letters get its probabilities, and
   the **decision rule** (`decide`) turns them into answers, the same for every method:
   * one label per letter, more than two labels: the most probable label;
   * two labels: the operating threshold on P(positive), chosen by the rule the user picked (best-f1, a target
     sensitivity or specificity; or most-probable) on probabilities of the fold's *training* letters that the fitted
     classifier did not learn from (`Fitted.decision_letters`: out-of-fold for methods cheap to refit, the validation
     carve for those that fine-tune); never on a test letter;
   * label sets: one threshold per label, the best F1 on those same probabilities;
4. scoring of the out-of-fold predictions (engine.evaluation.scoring), under cv a refit on the plan's final letters
   (the stored classifier, with its own decision), the hashes of the letters it read (engine.evaluation.overlap), the manifest (what every method records, plus the method's
   `record`) and the sealed artifact with predictions.json; progress and cancellation between folds.

`produce(method, dataset, model, opts, ctx)` is a step of a method that produces a model rather than a classifier
(domain-adapt): the same plan, leakage guard, cache key and lookup (in the method's own folder, `Method.folder`),
manifest framing and sealing, around the method's `build` (its training and figures) instead of folds and a decision.

Every split inside a fold's training letters (grid search, calibration, thresholds, epoch choice, validation carve) goes
through `Job.inner_splits` / `Job.carve`, which keep the plan's duplicate groups whole with the plan's own splitter, so
copies of a letter never sit on both sides of an inner split either.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from engine.cache import artifacts
from engine.cache.artifacts import StepResult
from engine.cache.context import StepContext, ensure
from engine.cache.storage import sha256_json
from engine.data.dataset import Dataset
from engine.evaluation import binary, overlap, scoring
from engine.methods.base import MULTI_LABEL_RULE, Decision, Fitted, Job, Method, fold_tag
from engine.models import catalog
from engine.models.devices import choose
from engine.options.groups import MOST_PROBABLE, Options, key_dict
from engine.protocols import plans


def decide(job: Job, fitted: Fitted) -> Decision:
    """The decision of a fitted classifier, chosen on probabilities of training letters it did not learn from."""
    d = job.opts.decision
    if job.multi:
        letters = fitted.decision_letters()
        Y = job.y
        if letters is None:
            return Decision(MULTI_LABEL_RULE, thresholds=np.full(len(job.classes), 0.5))
        rows, proba = letters
        return Decision(
            MULTI_LABEL_RULE,
            thresholds=np.array([binary.best_threshold(proba[:, j], Y[rows, j]) for j in range(len(job.classes))], dtype=float),
        )
    if not job.two_labels:
        return Decision(MOST_PROBABLE)
    pos = job.positive
    if d.threshold_rule == MOST_PROBABLE:
        return Decision(MOST_PROBABLE, positive=pos)
    letters = fitted.decision_letters()
    if letters is None:
        return Decision(d.threshold_rule, threshold=0.5, positive=pos)
    rows, proba = letters
    t = binary.choose_threshold(proba[:, job.classes.index(pos)], job.y[rows] == pos, d.threshold_rule, d.threshold_target)
    return Decision(d.threshold_rule, threshold=float(t), positive=pos)


def cache_key(job: Job, base: str) -> str:
    """The evaluation's key: the method's own key, plus what the harness decides that keys made before ClinBench 0.3 did
    not hold: a two-label task's decision options (for the methods that answered at the most probable label then) and
    the grouped inner splits (for methods that split their training letters, on letters with duplicate groups). Keys of
    everything else are unchanged, so those stored evaluations stay cache hits."""
    m = job.method
    extra: dict[str, Any] = {}
    if job.two_labels and not m.keyed_decision:
        extra["decision"] = key_dict(job.opts.decision)
    if m.inner_splits and plans.has_duplicates(job.plan.groups):
        extra["inner_splits"] = "grouped"
    return base if not extra else sha256_json({"key": base, **extra})[:32]


def _job(method: Method, dataset: Dataset, model: str, opts: Options, ctx: StepContext, t_start: float) -> Job:
    """The step's job after the plan, the leakage guard and the method's setup (both entries start so)."""
    opts = method.options(opts)
    plan = method.plan(dataset, opts)  # refuses before any work when a class cannot be scored
    job = Job(method, dataset, model, opts, plan, ctx, choose(), t_start)
    if method.stage != "reference":
        scoring.require_unseen(catalog.resolve(model), dataset, plan)
    method.setup(job)
    return job


def _framing(job: Job, key: str) -> dict[str, Any]:
    """What every manifest starts with: its kind and key, the model, the method, the options, the letters, the plan."""
    m = job.method
    return {
        "kind": m.artifact,
        "key": key,
        "model": job.identity or {"name": m.result_name(job)},
        "method": m.name,
        "method_title": m.title,
        "stage": m.stage,
        "config": job.opts.to_dict(),
        "data": artifacts.data_manifest(job.dataset),
        "protocol": job.plan.manifest(),
    }


def evaluate(method: Method, dataset: Dataset, model: str, opts: Options, ctx: StepContext | None = None) -> StepResult:
    """One step of `method`: its evaluation under the plan, cached and sealed (see the module docstring)."""
    ctx = ensure(ctx)
    t_start = time.perf_counter()
    job = _job(method, dataset, model, opts, ctx, t_start)
    opts, plan = job.opts, job.plan
    key = cache_key(job, method.key(job))
    folder = method.folder(job, key)
    if hit := artifacts.stored(folder, method.result_name(job), method.name):
        return hit
    method.prepare(job)
    n_fits = len(plan.folds) + (plan.name == "cv")
    fits: list[Fitted] = []
    decisions: list[Decision] = []
    parts = []
    t_folds = time.perf_counter()
    for i, fold in enumerate(plan.folds):
        ctx.check_stop(f"Cancelled before fold {i + 1} of {len(plan.folds)}.")
        label = scoring.fold_label(plan, fold)
        ctx.progress(i, n_fits, f"{method.name} {label}".strip())
        fitted = method.fit(job, fold.train, fold_tag(fold), label)
        proba = np.asarray(fitted.predict_proba(fold.test), dtype=float)
        if proba.shape != (len(fold.test), len(dataset.classes)):
            raise RuntimeError(f"fold {i + 1}: expected probabilities of shape {(len(fold.test), len(dataset.classes))}, got {proba.shape}")
        decision = decide(job, fitted)
        fits.append(fitted)
        decisions.append(decision)
        parts.append((fold, proba, decision.predict(proba, dataset.classes)))
        method.fold_done(job, fitted, fold_tag(fold))
    folds_s = time.perf_counter() - t_folds
    oof = scoring.out_of_fold(parts)
    two = job.two_labels and decisions[0].threshold is not None
    m = scoring.score(
        dataset,
        plan,
        oof,
        n_boot=opts.protocol.n_boot,
        seed=opts.protocol.seed,
        decision=opts.decision,
        thresholds=[d.threshold for d in decisions] if two else None,
    )
    if plan.name == "cv":
        ctx.check_stop("Cancelled before refitting on every letter.")
        ctx.progress(len(plan.folds), n_fits, f"{method.name} on every letter")
        final = method.fit(job, plan.final_train, "all", "all letters")
        final_decision = decide(job, final)
    else:
        final, final_decision = fits[0], decisions[0]
    if two:
        m["threshold"] = final_decision.threshold  # the stored classifier's (the folds' are in fold_thresholds)
    read = method.letters_read(job, final, plan.final_train if plan.final_train is not None else plan.folds[0].train)
    trained = overlap.hashes([dataset.texts[i] for i in read])
    manifest = {
        **_framing(job, key),
        "predictor": method.predictor,
        "refit": "every letter" if plan.name == "cv" else "training split",
        "decision": {
            **final_decision.manifest(dataset.classes),
            "folds": {fold_tag(f): d.manifest(dataset.classes) for f, d in zip(plan.folds, decisions, strict=True)},
        },
        **method.record(job, final, fits),
        **overlap.manifest_part(trained),
    }
    manifest["timings"] = {**manifest.get("timings", {}), "folds_s": folds_s, "total_s": time.perf_counter() - t_start}
    manifest.update(artifacts.provenance(m))  # versions, environment, metrics, created

    def write_files(tmp):
        method.save(job, final, tmp)
        scoring.write_predictions(tmp, dataset, plan, oof)
        overlap.write(tmp, trained)

    folder.parent.mkdir(parents=True, exist_ok=True)
    manifest = artifacts.write(folder, manifest, write_files)
    method.finish(job, fits)
    ctx.progress(1, 1, "done")
    return StepResult(method.result_name(job), method.name, m, str(folder), False, manifest)


def produce(method: Method, dataset: Dataset, model: str, opts: Options, ctx: StepContext | None = None) -> StepResult:
    """One step of a method that produces a model (domain-adapt): its model, cached and sealed (see the module docstring)."""
    ctx = ensure(ctx)
    job = _job(method, dataset, model, opts, ctx, time.perf_counter())
    key = method.key(job)
    folder = method.folder(job, key)
    if hit := artifacts.stored(folder, method.result_name(job), method.name):
        return hit
    method.prepare(job)
    built = method.build(job)
    manifest = {**_framing(job, key), **built.record}
    manifest["timings"] = {**manifest.get("timings", {}), "total_s": time.perf_counter() - job.t_start}
    manifest.update(artifacts.provenance(built.metrics))  # versions, environment, metrics, created
    folder.parent.mkdir(parents=True, exist_ok=True)
    manifest = artifacts.write(folder, manifest, built.write)
    method.finish(job, [])
    ctx.progress(1, 1, "done")
    return StepResult(method.result_name(job), method.name, built.metrics, str(folder), False, manifest)
