"""The `svc` and `logreg` steps: frozen embeddings -> a scikit-learn classifier.

`embedding_step` embeds every letter with the pretrained model (cached by content), then for each
fold of the plan (engine.protocols) fits the estimator on the fold's training vectors (engine.estimators:
search and calibration inside those letters only) and scores its test letters; under cv it refits on
every letter for the stored classifier. `fit_on_embeddings` is its second half, shared with `lora-svc` and
`adapt-svc`, which feed it the vectors of a model tuned (or domain-adapted) on each fold's training letters instead. Multi-label letters get one
classifier and one threshold per label; a two-label task's operating threshold is chosen on the training letters'
cross-validated probabilities (engine.binary, DecisionOptions).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict

import numpy as np

from engine.cache import artifacts
from engine.cache.artifacts import StepResult
from engine.cache.context import StepContext, ensure
from engine.cache.storage import evaluations_dir, sha256_json
from engine.data.dataset import Dataset
from engine.data.labels import indicator
from engine.evaluation import binary, scoring
from engine.features import extract
from engine.methods import estimators
from engine.methods.base import StepKind
from engine.models import catalog
from engine.models.devices import choose
from engine.options.groups import Options, key_dict, names
from engine.protocols import plans

READS = names("protocol", "embedding", "classifier", "decision")
EVAL_VERSION = 2  # 2: cross-validation plans, duplicate groups, every class counted


def evaluation_key(estats_key: str, estimator: str, method: str, opts: Options, plan_hash: str, two_labels: bool = False) -> str:
    """The cache key of an evaluation on embeddings: the vectors, the estimator and its options, the folds, the protocol
    (and for a two-label task the decision options: its threshold)."""
    p = opts.protocol
    return sha256_json(
        {
            "v": EVAL_VERSION,
            "embeddings": estats_key,
            "classifier": estimators.config_key(estimator, opts.classifier, p.seed),
            "plan": plan_hash,
            "n_boot": p.n_boot,
            **({"method": method} if method != estimator else {}),
            **({"decision": key_dict(opts.decision), "binary": 1} if two_labels else {}),
        }
    )[:32]


def embedding_step(dataset: Dataset, model: str, method: str, opts: Options, ctx: StepContext | None = None) -> StepResult:
    """Embed the letters, fit on each fold's training letters, score its test letters, refit on all letters (cv), store everything."""
    ctx = ensure(ctx)
    if method not in estimators.ESTIMATORS:
        raise ValueError(f"embedding_step runs {', '.join(estimators.ESTIMATORS)}, not {method!r}.")
    t_start = time.perf_counter()
    plan = plans.plan(dataset, opts.protocol, method)  # refuses before any embedding when a class cannot be scored
    placement = choose()
    entry = catalog.resolve(model)
    scoring.require_unseen(entry, dataset, plan)
    e = opts.embedding
    X, estats = extract.embed(
        model,
        dataset.texts,
        pooling=e.pooling,
        max_length=e.max_length,
        placement=placement,
        batch_tokens=e.batch_tokens,
        windows=e.windows,
        ctx=ctx,
    )
    identity = {"name": entry.name, **extract.read_meta(estats.key)["model"]}
    return fit_on_embeddings(
        dataset,
        plan,
        lambda fold: X,
        estats,
        identity,
        KINDS[method],
        opts,
        estimator=method,
        placement=placement,
        ctx=ctx,
        t_start=t_start,
    )


def fit_on_embeddings(
    dataset: Dataset,
    plan: plans.Plan,
    vectors: Callable,
    estats: extract.EmbedStats,
    model_identity: dict,
    kind: StepKind,
    opts: Options,
    *,
    estimator: str,
    placement,
    ctx: StepContext | None = None,
    t_start: float | None = None,
    extra: dict | Callable[[], dict] | None = None,
    write_extra: Callable | None = None,
) -> StepResult:
    """Fit `estimator` (svc|logreg) on each fold's training vectors and score its test letters; under cv, refit on every
    letter for the stored classifier (under holdout the stored classifier is the one fitted on the training split). `plan`
    is the step's (plans.plan for the kind). The artifact is stored under the step kind's name (svc, logreg, lora-svc). `vectors(fold)` gives every letter's vectors
    for a fold (the same frozen vectors for every fold, or those of a model tuned on that fold's training letters;
    `vectors(None)`: the stored classifier's) and `estats` describes the stored classifier's vectors. `extra` (a dict, or a
    function called once the folds are fitted) adds to the manifest; `write_extra(folder)` adds files to the artifact."""
    ctx = ensure(ctx)
    t_start = t_start or time.perf_counter()
    p = opts.protocol
    two_labels = binary.is_two_label(dataset)
    key = evaluation_key(estats.key, estimator, kind.name, opts, plan.hash, two_labels)
    folder = evaluations_dir() / key
    if hit := artifacts.stored(folder, model_identity["name"], kind.name):
        return hit
    classes = dataset.classes
    multi = dataset.multi_label
    y = indicator(dataset.labels, classes) if multi else np.asarray(dataset.labels, dtype=str)
    pos = binary.positive_label(classes, dataset.labels, opts.decision.positive_label) if two_labels else None
    fits: list[estimators.FitResult] = []

    def fit(X, rows):
        if multi:  # one classifier and one threshold per label
            return estimators.fit_multilabel(X[rows], y[rows], classes, estimator, opts.classifier, p.seed)
        fitted = estimators.fit(X[rows], y[rows], estimator, opts.classifier, p.seed, oof=two_labels)
        if two_labels:  # the operating threshold, from the training letters' cross-validated probabilities
            d, tp = opts.decision, fitted.train_proba
            col = list(map(str, fitted.estimator.classes_)).index(pos)
            t = 0.5 if tp is None else binary.choose_threshold(tp[:, col], y[rows] == pos, d.threshold_rule, d.threshold_target)
            fitted.estimator.threshold_, fitted.estimator.positive_label_ = t, pos
        return fitted

    def fit_predict(fold):
        ctx.progress(len(fits), len(plan.folds) + (plan.name == "cv"), f"fitting {estimator} {scoring.fold_label(plan, fold)}".strip())
        X = np.asarray(vectors(fold))
        fitted = fit(X, fold.train)
        fits.append(fitted)
        if multi:
            return fitted.estimator.predict_proba(X[fold.test]), fitted.estimator.predict(X[fold.test])
        proba = scoring.aligned(fitted.estimator.predict_proba(X[fold.test]), fitted.estimator.classes_, classes)
        if two_labels:
            return proba, binary.one_hot(proba[:, classes.index(pos)] >= fitted.estimator.threshold_, classes, pos)
        return proba

    t_fit = time.perf_counter()
    oof = scoring.cross_predict(plan, fit_predict, len(classes), ctx)
    cv_s = time.perf_counter() - t_fit
    thresholds = [f.estimator.threshold_ for f in fits] if two_labels else None
    m = scoring.score(dataset, plan, oof, n_boot=p.n_boot, seed=p.seed, decision=opts.decision, thresholds=thresholds)
    if plan.name == "cv":
        ctx.check_stop("Cancelled before refitting on every letter.")
        ctx.progress(len(fits), len(plan.folds) + 1, f"refitting {estimator} on every letter")
        X_all, rows = np.asarray(vectors(None)), plan.final_train  # every letter, or labels_per_class of them
        final = fit(X_all, rows)
    else:
        final = fits[0]
    if two_labels:
        m["threshold"] = final.estimator.threshold_  # the stored classifier's (the folds' are in fold_thresholds)
    e = opts.embedding
    manifest = {
        "kind": "evaluation",
        "key": key,
        "model": model_identity,
        "method": kind.name,
        "method_title": kind.title,
        "stage": kind.stage,
        "predictor": "embedding-classifier",
        "embedder": {"pooling": e.pooling, "max_length": e.max_length, "windows": e.windows},
        "config": {**opts.to_dict(), "classifier": estimators.config_key(estimator, opts.classifier, p.seed)},
        "data": artifacts.data_manifest(dataset),
        "protocol": plan.manifest(),
        "refit": "every letter" if plan.name == "cv" else "training split",
        "embeddings": dict(asdict(estats).items()),
        "placement": {"device": placement.device, "dtype": placement.dtype},
        "classifier": {
            "best_params": final.best_params,
            f"inner_cv_{final.inner_cv_metric}": final.inner_cv_macro_f1,
            "inner_folds": final.inner_folds,
            "smote": final.smote,
            "calibration": final.calibration,
            "fold_best_params": [f.best_params for f in fits],
            **(
                {"thresholds": final.calibration["thresholds"], "fold_thresholds": [f.calibration["thresholds"] for f in fits]}
                if multi
                else {}
            ),
            **({"threshold": final.estimator.threshold_, "positive_label": pos, "fold_thresholds": thresholds} if two_labels else {}),
        },
        "timings": {
            "embed_s": estats.seconds,
            "embed_cache_hit": estats.cache_hit,
            "folds_s": cv_s,
            "fit_s": final.seconds,
            "total_s": time.perf_counter() - t_start,
        },
        **artifacts.provenance(m),  # versions, environment, metrics, created
        **((extra() if callable(extra) else extra) or {}),
    }

    def write_files(tmp):
        from engine.cache.estimator_files import save_estimator

        save_estimator(tmp, final.estimator)
        scoring.write_predictions(tmp, dataset, plan, oof)
        if write_extra:
            write_extra(tmp)

    manifest = artifacts.write(folder, manifest, write_files)
    ctx.progress(1, 1, "done")
    return StepResult(model_identity["name"], kind.name, m, str(folder), False, manifest)


SVC = StepKind("svc", "frozen embeddings → SVC", "frozen", embedding_step, READS, label_sets=True)
LOGREG = StepKind("logreg", "frozen embeddings → logistic regression", "frozen", embedding_step, READS, label_sets=True, after=("svc",))
KINDS = {k.name: k for k in (SVC, LOGREG)}
