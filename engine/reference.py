"""The reference row of every comparison: tf-idf + logistic regression, on the same folds.

The first question a user asks is whether a language model beats bag-of-words on their letters. This
step answers it with a fixed, untuned configuration (word 1-2-grams, sublinear tf, min_df 2, L2 logistic
regression at C = 10 with balanced class weights), fitted inside each training fold (the vocabulary
and idf too, so no test letter leaks into them), scored on the plan's folds like every method, and
refitted on every letter under cv. It is the model `tfidf` with the method `tfidf`.
"""

from __future__ import annotations

import time

import numpy as np

from engine import artifacts, evaluation, protocols
from engine.artifacts import StepResult
from engine.context import StepContext, StepKind, ensure
from engine.data import Dataset, require_single_label
from engine.options import Options
from engine.storage import evaluations_dir, sha256_json

MODEL = "tfidf"
VERSION = 1
CONFIG = {"ngram_range": [1, 2], "min_df": 2, "sublinear_tf": True, "C": 10.0, "class_weight": "balanced"}


def pipeline(seed: int):
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline

    return make_pipeline(
        TfidfVectorizer(ngram_range=tuple(CONFIG["ngram_range"]), min_df=CONFIG["min_df"], sublinear_tf=CONFIG["sublinear_tf"]),
        LogisticRegression(C=CONFIG["C"], class_weight=CONFIG["class_weight"], max_iter=2000, random_state=seed),
    )


def evaluation_key(opts: Options, plan_hash: str) -> str:
    """The cache key of a reference evaluation: its configuration, the folds, the protocol's bootstrap and seed."""
    p = opts.protocol
    return sha256_json({"v": VERSION, "method": "tfidf", "config": CONFIG, "plan": plan_hash, "n_boot": p.n_boot, "seed": p.seed})[:32]


def _fit(texts: list[str], y: np.ndarray, idx: np.ndarray, seed: int):
    model = pipeline(seed)
    subset = [texts[i] for i in idx]
    try:
        return model.fit(subset, y[idx])
    except ValueError:  # too few letters for min_df=2: keep every word
        model.set_params(tfidfvectorizer__min_df=1)
        return model.fit(subset, y[idx])


def tfidf_step(dataset: Dataset, model: str, method: str, opts: Options, ctx: StepContext | None = None) -> StepResult:
    """Fit the reference on each fold's training letters, score its test letters, refit on every letter (cv), store it."""
    ctx = ensure(ctx)
    require_single_label(dataset)
    t_start = time.perf_counter()
    p = opts.protocol
    plan = protocols.plan(dataset, p, TFIDF.name)
    key = evaluation_key(opts, plan.hash)
    folder = evaluations_dir() / key
    if hit := artifacts.stored(folder, MODEL, TFIDF.name):
        return hit
    texts, y, classes = dataset.texts, np.asarray(dataset.labels, dtype=str), dataset.classes
    fits = []

    def fit_predict(fold):
        ctx.progress(len(fits), len(plan.folds) + 1, f"fitting tf-idf {evaluation.fold_label(plan, fold)}".strip())
        fitted = _fit(texts, y, fold.train, p.seed)
        fits.append(fitted)
        return evaluation.aligned(fitted.predict_proba([texts[i] for i in fold.test]), fitted.classes_, classes)

    oof = evaluation.cross_predict(plan, fit_predict, len(classes), ctx)
    m = evaluation.score(dataset, plan, oof, n_boot=p.n_boot, seed=p.seed)
    final = _fit(texts, y, plan.final_train, p.seed) if plan.name == "cv" else fits[0]
    manifest = {
        "kind": "evaluation",
        "key": key,
        "model": {"name": MODEL, "kind": "reference"},
        "method": TFIDF.name,
        "method_title": TFIDF.title,
        "stage": TFIDF.stage,
        "predictor": "text-pipeline",
        "config": {**opts.to_dict(), "reference": CONFIG},
        "data": artifacts.data_manifest(dataset),
        "protocol": plan.manifest(),
        "refit": "every letter" if plan.name == "cv" else "training split",
        "timings": {"total_s": time.perf_counter() - t_start},
        **artifacts.provenance(m),  # versions, environment, metrics, created
    }

    def write_files(tmp):
        import joblib

        joblib.dump(final, tmp / "classifier.joblib")
        evaluation.write_predictions(tmp, dataset, plan, oof)

    manifest = artifacts.write(folder, manifest, write_files)
    ctx.progress(1, 1, "done")
    return StepResult(MODEL, TFIDF.name, m, str(folder), False, manifest)


TFIDF = StepKind(
    "tfidf",
    "tf-idf → logistic regression (reference)",
    "reference",
    tfidf_step,
    ("protocol", "seed", "test_size", "cv_folds", "cv_repeats", "near_duplicates", "n_boot", "labels_per_class"),
)
