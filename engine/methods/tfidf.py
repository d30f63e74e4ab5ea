"""The reference row of every comparison: tf-idf + logistic regression, on the same folds.

The first question a user asks is whether a language model beats bag-of-words on their letters. This
step answers it with a fixed, untuned configuration (word 1-2-grams, sublinear tf, min_df 2, L2 logistic
regression at C = 10 with balanced class weights), fitted inside each training fold (the vocabulary
and idf too, so no test letter leaks into them), scored on the plan's folds like every method, and
refitted on every letter under cv. It is the model `tfidf` with the method `tfidf`.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from engine.cache.estimator_files import save_estimator
from engine.cache.storage import sha256_json
from engine.evaluation import scoring
from engine.methods.base import Job, Method
from engine.options.groups import Options, key_dict, names

MODEL = "tfidf"
VERSION = 1
INNER_FOLDS = 3  # the inner splits the thresholds are chosen on (labels with fewer letters: fewer)
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


def _fit_multilabel(texts: list[str], Y: np.ndarray, classes: list[str], idx: np.ndarray, seed: int, groups: np.ndarray):
    """The multi-label reference fitted on the letters `idx`, and its estimator's fit (train_proba: out-of-fold)."""
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

    fitted = fit_multilabel(X, Y[idx], classes, "logreg", ClassifierOptions(grid=False), seed, groups, make=make, grid={})
    return TextOneVsRest(vectorizer, fitted.estimator), fitted.train_proba


def evaluation_key(opts: Options, plan_hash: str, two_labels: bool = False) -> str:
    """The cache key of a reference evaluation: its configuration, the folds, the protocol's bootstrap and seed (and for
    a two-label task the decision options: its threshold)."""
    p = opts.protocol
    decision = {"decision": key_dict(opts.decision), "binary": 1} if two_labels else {}
    return sha256_json(
        {"v": VERSION, "method": "tfidf", "config": CONFIG, "plan": plan_hash, "n_boot": p.n_boot, "seed": p.seed, **decision}
    )[:32]


def _out_of_fold(texts: list[str], y: np.ndarray, idx: np.ndarray, seed: int, splits: list) -> np.ndarray:
    """Probabilities of the training letters `idx`, each predicted by a pipeline (vocabulary included) fitted on the
    other inner splits."""
    from sklearn.model_selection import cross_val_predict

    subset = [texts[i] for i in idx]
    try:
        return cross_val_predict(pipeline(seed), subset, y[idx], cv=splits, method="predict_proba")
    except ValueError:  # an inner fold too small for min_df=2, as in _fit
        return cross_val_predict(pipeline(seed).set_params(tfidfvectorizer__min_df=1), subset, y[idx], cv=splits, method="predict_proba")


def _fit(texts: list[str], y: np.ndarray, idx: np.ndarray, seed: int):
    model = pipeline(seed)
    subset = [texts[i] for i in idx]
    try:
        return model.fit(subset, y[idx])
    except ValueError:  # too few letters for min_df=2: keep every word
        model.set_params(tfidfvectorizer__min_df=1)
        return model.fit(subset, y[idx])


class TfidfFit:
    """The reference fitted on some training letters; it reads the letters' texts."""

    def __init__(self, job: Job, model, train: np.ndarray, train_proba: np.ndarray | None):
        self.job, self.model, self.train, self.train_proba = job, model, train, train_proba

    def predict_proba(self, rows: np.ndarray) -> np.ndarray:
        proba = self.model.predict_proba([self.job.dataset.texts[i] for i in rows])
        return proba if self.job.multi else scoring.aligned(proba, self.model.classes_, self.job.classes)

    def decision_letters(self) -> tuple[np.ndarray, np.ndarray] | None:
        if self.train_proba is None:
            return None
        tp = self.train_proba
        return self.train, tp if self.job.multi else scoring.aligned(tp, sorted(set(self.job.y[self.train].tolist())), self.job.classes)


class Tfidf(Method):
    name = "tfidf"
    title = "tf-idf → logistic regression (reference)"
    stage = "reference"
    predictor = "text-pipeline"
    label_sets = True
    inner_splits = True
    keyed_decision = True
    reads = ("protocol", "seed", "test_size", "cv_folds", "cv_repeats", "near_duplicates", "n_boot", "labels_per_class", *names("decision"))

    def setup(self, job: Job) -> None:
        job.identity = {"name": MODEL, "kind": "reference"}

    def key(self, job: Job) -> str:
        return evaluation_key(job.opts, job.plan.hash, job.two_labels)

    def fit(self, job: Job, train: np.ndarray, tag: str, label: str) -> TfidfFit:
        seed, texts = job.opts.protocol.seed, job.dataset.texts
        if job.multi:
            model, tp = _fit_multilabel(texts, job.y, job.classes, train, seed, job.plan.groups[train])
            return TfidfFit(job, model, train, tp)
        model = _fit(texts, job.y, train, seed)
        splits = job.inner_splits(train, INNER_FOLDS, seed) if job.needs_decision else []
        return TfidfFit(job, model, train, _out_of_fold(texts, job.y, train, seed, splits) if splits else None)

    def save(self, job: Job, final: TfidfFit, folder: Path) -> None:
        save_estimator(folder, final.model)

    def record(self, job: Job, final: TfidfFit, fits: list[TfidfFit]) -> dict:
        return {"config": {**job.opts.to_dict(), "reference": CONFIG}}


METHOD = Tfidf()
