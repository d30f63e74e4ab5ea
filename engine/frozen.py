"""The `svc` and `logreg` steps: frozen embeddings -> a scikit-learn classifier.

`embedding_step` embeds every letter with the pretrained model (cached by content), fits the
estimator on the training split's vectors (engine.estimators: search and calibration inside the
training split only), scores the test split once and seals the artifact. `fit_on_embeddings` is
its second half, shared with `lora-svc`, which feeds it the LoRA-tuned model's vectors instead.
"""

from __future__ import annotations

import time
from dataclasses import asdict

import numpy as np

from engine import artifacts, estimators, features, metrics, models, protocols
from engine.artifacts import StepResult
from engine.config import package_versions
from engine.context import StepContext, StepKind, ensure
from engine.data import Dataset, require_single_label
from engine.devices import choose
from engine.options import Options, names
from engine.storage import evaluations_dir, sha256_json

READS = names("protocol", "embedding", "classifier")


def evaluation_key(estats_key: str, estimator: str, method: str, opts: Options, split_hash: str) -> str:
    """The cache key of an evaluation on embeddings: the vectors, the estimator and its options, the split, the protocol."""
    p = opts.protocol
    return sha256_json(
        {
            "embeddings": estats_key,
            "classifier": estimators.config_key(estimator, opts.classifier, p.seed),
            "split": split_hash,
            "cv_repeats": p.cv_repeats,
            "n_boot": p.n_boot,
            **({"method": method} if method != estimator else {}),
        }
    )[:32]


def embedding_step(dataset: Dataset, model: str, method: str, opts: Options, ctx: StepContext | None = None) -> StepResult:
    """Embed the letters, fit on the training split, score the test split once, store everything."""
    ctx = ensure(ctx)
    if method not in estimators.ESTIMATORS:
        raise ValueError(f"embedding_step runs {', '.join(estimators.ESTIMATORS)}, not {method!r}.")
    require_single_label(dataset)
    t_start = time.perf_counter()
    placement = choose()
    entry = models.resolve(model)
    e = opts.embedding
    X, estats = features.embed(
        model, dataset.texts, pooling=e.pooling, max_length=e.max_length, placement=placement, batch_tokens=e.batch_tokens, ctx=ctx
    )
    identity = {"name": entry.name, **features.read_meta(estats.key)["model"]}
    return fit_on_embeddings(
        dataset, X, estats, identity, KINDS[method], opts, estimator=method, placement=placement, ctx=ctx, t_start=t_start
    )


def fit_on_embeddings(
    dataset: Dataset,
    X,
    estats: features.EmbedStats,
    model_identity: dict,
    kind: StepKind,
    opts: Options,
    *,
    estimator: str,
    placement,
    ctx: StepContext | None = None,
    t_start: float | None = None,
    extra: dict | None = None,
) -> StepResult:
    """Fit `estimator` (svc|logreg) on the training split's vectors, score the test split once, store the artifact
    under the step kind's name (svc, logreg, lora-svc)."""
    ctx = ensure(ctx)
    t_start = t_start or time.perf_counter()
    p = opts.protocol
    split = protocols.split(dataset, test_size=p.test_size, seed=p.seed)
    key = evaluation_key(estats.key, estimator, kind.name, opts, split.hash)
    folder = evaluations_dir() / key
    if hit := artifacts.stored(folder, model_identity["name"], kind.name):
        return hit
    ctx.check_stop("Cancelled before fitting the classifier.")
    ctx.progress(0, 1, f"fitting {estimator}")
    y = np.asarray(dataset.labels, dtype=str)
    X = np.asarray(X)
    fitted = estimators.fit(X[split.train], y[split.train], estimator, opts.classifier, p.seed)
    t_pred = time.perf_counter()
    proba = fitted.estimator.predict_proba(X[split.test])
    classes = [str(c) for c in fitted.estimator.classes_]
    y_pred = np.asarray(classes)[proba.argmax(1)]  # the most probable label (what the estimator's predict returns)
    predict_s = time.perf_counter() - t_pred
    m = metrics.metrics(y[split.test], y_pred, n_boot=p.n_boot, seed=p.seed)
    m["baseline"] = metrics.majority_baseline(y[split.train], y[split.test])
    if p.cv_repeats > 0:

        def fit_predict(X_train, y_train, X_test):
            return estimators.fit(X_train, y_train, estimator, opts.classifier, p.seed).estimator.predict(X_test)

        m["repeated_cv"] = protocols.repeated_cv(X, y, fit_predict, seed=p.seed, n_repeats=p.cv_repeats)
    e = opts.embedding
    manifest = {
        "kind": "evaluation",
        "key": key,
        "model": model_identity,
        "method": kind.name,
        "method_title": kind.title,
        "stage": kind.stage,
        "predictor": "embedding-classifier",
        "embedder": {"pooling": e.pooling, "max_length": e.max_length},
        "config": {**opts.to_dict(), "classifier": estimators.config_key(estimator, opts.classifier, p.seed)},
        "data": artifacts.data_manifest(dataset),
        "split": artifacts.split_manifest(split),
        "embeddings": dict(asdict(estats).items()),
        "placement": {"device": placement.device, "dtype": placement.dtype},
        "classifier": {
            "best_params": fitted.best_params,
            "inner_cv_macro_f1": fitted.inner_cv_macro_f1,
            "inner_folds": fitted.inner_folds,
            "smote": fitted.smote,
            "calibration": fitted.calibration,
        },
        "timings": {
            "embed_s": estats.seconds,
            "embed_cache_hit": estats.cache_hit,
            "fit_s": fitted.seconds,
            "predict_s": predict_s,
            "total_s": time.perf_counter() - t_start,
        },
        "versions": package_versions(),
        "metrics": m,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        **(extra or {}),
    }

    def write_files(tmp):
        import joblib

        joblib.dump(fitted.estimator, tmp / "classifier.joblib")
        artifacts.write_predictions(tmp, split.test, y[split.test], y_pred, classes, "probability", proba)

    manifest = artifacts.write(folder, manifest, write_files)
    ctx.progress(1, 1, "done")
    return StepResult(model_identity["name"], kind.name, m, str(folder), False, manifest)


SVC = StepKind("svc", "frozen embeddings → SVC", "frozen", embedding_step, READS)
LOGREG = StepKind("logreg", "frozen embeddings → logistic regression", "frozen", embedding_step, READS)
KINDS = {k.name: k for k in (SVC, LOGREG)}
