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

from engine.cache import artifacts
from engine.cache.artifacts import StepResult
from engine.cache.context import StepContext, ensure
from engine.cache.storage import evaluations_dir, sha256_json
from engine.data.dataset import Dataset
from engine.data.labels import indicator
from engine.evaluation import binary, scoring
from engine.methods.base import StepKind
from engine.options.groups import Options, key_dict, names
from engine.protocols import plans

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


class TextOneVsRest:
    """Multi-label reference: the tf-idf vocabulary of the training letters, then one logistic regression and one
    threshold per label (engine.methods.estimators.OneVsRest). Answers classes_, predict_proba(texts), predict(texts), thresholds_."""

    def __init__(self, vectorizer, ovr):
        self.vectorizer, self.ovr = vectorizer, ovr
        self.classes_, self.thresholds_ = ovr.classes_, ovr.thresholds_

    def predict_proba(self, texts) -> np.ndarray:
        return self.ovr.predict_proba(self.vectorizer.transform(list(texts)))

    def predict(self, texts) -> np.ndarray:
        return self.ovr.predict(self.vectorizer.transform(list(texts)))


def _fit_multilabel(texts: list[str], Y: np.ndarray, classes: list[str], idx: np.ndarray, seed: int) -> TextOneVsRest:
    from sklearn.linear_model import LogisticRegression

    from engine.methods.estimators import fit_multilabel
    from engine.options.groups import ClassifierOptions

    vectorizer = pipeline(seed).steps[0][1]
    subset = [texts[i] for i in idx]
    try:
        X = vectorizer.fit_transform(subset)
    except ValueError:  # too few letters for min_df=2: keep every word
        X = vectorizer.set_params(min_df=1).fit_transform(subset)

    def make(params, weighted, s):  # liblinear: one binary problem per label, several times faster than lbfgs on tf-idf
        return LogisticRegression(C=CONFIG["C"], class_weight=CONFIG["class_weight"], solver="liblinear", random_state=s)

    fitted = fit_multilabel(X, Y[idx], classes, "logreg", ClassifierOptions(grid=False), seed, make=make, grid={})
    return TextOneVsRest(vectorizer, fitted.estimator)


def evaluation_key(opts: Options, plan_hash: str, two_labels: bool = False) -> str:
    """The cache key of a reference evaluation: its configuration, the folds, the protocol's bootstrap and seed (and for
    a two-label task the decision options: its threshold)."""
    p = opts.protocol
    decision = {"decision": key_dict(opts.decision), "binary": 1} if two_labels else {}
    return sha256_json(
        {"v": VERSION, "method": "tfidf", "config": CONFIG, "plan": plan_hash, "n_boot": p.n_boot, "seed": p.seed, **decision}
    )[:32]


def _threshold(texts: list[str], y: np.ndarray, idx: np.ndarray, pos: str, seed: int, decision) -> float:
    """A two-label task's threshold on P(pos): chosen on probabilities of the training letters `idx`, each predicted by a
    pipeline (vocabulary included) fitted on the other inner folds."""
    from sklearn.model_selection import StratifiedKFold, cross_val_predict

    yi = y[idx]
    folds = min(3, int(min(np.unique(yi, return_counts=True)[1])))
    if folds < 2:
        return 0.5
    cv, subset = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed), [texts[i] for i in idx]
    try:
        proba = cross_val_predict(pipeline(seed), subset, yi, cv=cv, method="predict_proba")
    except ValueError:  # an inner fold too small for min_df=2, as in _fit
        proba = cross_val_predict(pipeline(seed).set_params(tfidfvectorizer__min_df=1), subset, yi, cv=cv, method="predict_proba")
    col = sorted(set(yi.tolist())).index(pos)
    return binary.choose_threshold(proba[:, col], yi == pos, decision.threshold_rule, decision.threshold_target)


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
    t_start = time.perf_counter()
    p = opts.protocol
    plan = plans.plan(dataset, p, TFIDF.name)
    two_labels = binary.is_two_label(dataset)
    key = evaluation_key(opts, plan.hash, two_labels)
    folder = evaluations_dir() / key
    if hit := artifacts.stored(folder, MODEL, TFIDF.name):
        return hit
    texts, classes, multi = dataset.texts, dataset.classes, dataset.multi_label
    y = indicator(dataset.labels, classes) if multi else np.asarray(dataset.labels, dtype=str)
    pos = binary.positive_label(classes, dataset.labels, opts.decision.positive_label) if two_labels else None
    fits = []

    def fit(idx):
        if multi:
            return _fit_multilabel(texts, y, classes, idx, p.seed)
        fitted = _fit(texts, y, idx, p.seed)
        if two_labels:  # the operating threshold, from cross-validated probabilities of the training letters
            fitted.threshold_, fitted.positive_label_ = _threshold(texts, y, idx, pos, p.seed, opts.decision), pos
        return fitted

    def fit_predict(fold):
        ctx.progress(len(fits), len(plan.folds) + 1, f"fitting tf-idf {scoring.fold_label(plan, fold)}".strip())
        fitted = fit(fold.train)
        fits.append(fitted)
        test = [texts[i] for i in fold.test]
        if multi:
            return fitted.predict_proba(test), fitted.predict(test)
        proba = scoring.aligned(fitted.predict_proba(test), fitted.classes_, classes)
        if two_labels:
            return proba, binary.one_hot(proba[:, classes.index(pos)] >= fitted.threshold_, classes, pos)
        return proba

    oof = scoring.cross_predict(plan, fit_predict, len(classes), ctx)
    thresholds = [f.threshold_ for f in fits] if two_labels else None
    m = scoring.score(dataset, plan, oof, n_boot=p.n_boot, seed=p.seed, decision=opts.decision, thresholds=thresholds)
    final = fit(plan.final_train) if plan.name == "cv" else fits[0]
    if two_labels:
        m["threshold"] = final.threshold_  # the stored classifier's (the folds' are in fold_thresholds)
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
        from engine.cache.estimator_files import save_estimator

        save_estimator(tmp, final)
        scoring.write_predictions(tmp, dataset, plan, oof)

    manifest = artifacts.write(folder, manifest, write_files)
    ctx.progress(1, 1, "done")
    return StepResult(MODEL, TFIDF.name, m, str(folder), False, manifest)


TFIDF = StepKind(
    "tfidf",
    "tf-idf → logistic regression (reference)",
    "reference",
    tfidf_step,
    ("protocol", "seed", "test_size", "cv_folds", "cv_repeats", "near_duplicates", "n_boot", "labels_per_class", *names("decision")),
    label_sets=True,
)
