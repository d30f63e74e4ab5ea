"""Classifiers on embeddings: scaler -> optional SMOTE -> SVC or logistic regression.

The pipeline is imbalanced-learn's, so SMOTE resamples only the data a pipeline is
fitted on: inside each cross-validation fold, never the letters it is scored on.
Hyper-parameters are searched with stratified CV inside the training split only; the
test split is scored once, afterwards (see engine.experiment).

SMOTE needs k_neighbors + 1 letters of a class. `AdaptiveSMOTE` lowers k to fit the
smallest class of the data it sees, and skips oversampling when a class has a single
letter; what it did is kept on the fitted object and reported in the manifest.
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import asdict, dataclass, field

import numpy as np
from imblearn.over_sampling import SMOTE
from imblearn.pipeline import Pipeline
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import GridSearchCV, StratifiedKFold
from sklearn.preprocessing import StandardScaler
from sklearn.svm import SVC

EMBEDDING_METHODS = ("svc", "logreg")
FINE_TUNING_METHODS = ("linear-probe", "lora", "lora-svc", "domain-adapt")
ALL_METHODS = EMBEDDING_METHODS + FINE_TUNING_METHODS


@dataclass
class ClassifierConfig:
    method: str = "svc"  # svc | logreg
    smote: bool = True
    class_weight: str | None = None  # None or "balanced"
    grid: bool = True  # search C (and the SVC kernel) inside the training split
    inner_folds: int = 3
    k_neighbors: int = 5
    seed: int = 0

    def to_dict(self) -> dict:
        return asdict(self)


class AdaptiveSMOTE(SMOTE):
    """SMOTE whose k_neighbors shrinks to the smallest class it is fitted on (and which skips when a class has 1 letter)."""

    def _fit_resample(self, X, y):
        smallest = min(Counter(y).values())
        requested = self.k_neighbors
        if smallest < 2:
            self.k_used_, self.skipped_ = 0, True
            return X, y
        self.k_used_, self.skipped_ = min(requested, smallest - 1), False
        self.k_neighbors = self.k_used_
        try:
            return super()._fit_resample(X, y)
        finally:
            self.k_neighbors = requested


def build_pipeline(cfg: ClassifierConfig) -> Pipeline:
    steps = [("scale", StandardScaler())]
    if cfg.smote:
        steps.append(("smote", AdaptiveSMOTE(k_neighbors=cfg.k_neighbors, random_state=cfg.seed)))
    if cfg.method == "svc":
        clf = SVC(kernel="rbf", C=1.0, class_weight=cfg.class_weight, random_state=cfg.seed)
    elif cfg.method == "logreg":
        clf = LogisticRegression(C=1.0, class_weight=cfg.class_weight, max_iter=2000, random_state=cfg.seed)
    else:
        raise ValueError(f"{cfg.method!r} is not a classifier on embeddings; use one of {', '.join(EMBEDDING_METHODS)}.")
    steps.append(("clf", clf))
    return Pipeline(steps)


def param_grid(cfg: ClassifierConfig) -> dict:
    if cfg.method == "svc":
        return {"clf__kernel": ["linear", "rbf"], "clf__C": [0.1, 1.0, 10.0]}
    return {"clf__C": [0.01, 0.1, 1.0, 10.0]}


@dataclass
class FitResult:
    estimator: Pipeline
    best_params: dict
    inner_cv_macro_f1: float | None
    inner_folds: int
    smote: dict = field(default_factory=dict)
    seconds: float = 0.0


def fit(X: np.ndarray, y, cfg: ClassifierConfig) -> FitResult:
    """Fit on training data only, choosing hyper-parameters by stratified CV inside it."""
    t0 = time.perf_counter()
    y = np.asarray(y)
    smallest = min(Counter(y).values())
    folds = min(cfg.inner_folds, smallest)
    pipe = build_pipeline(cfg)
    best_params, cv_score = {}, None
    if cfg.grid and folds >= 2:
        cv = StratifiedKFold(n_splits=folds, shuffle=True, random_state=cfg.seed)
        search = GridSearchCV(pipe, param_grid(cfg), scoring="f1_macro", cv=cv, n_jobs=1, refit=True, error_score="raise")
        search.fit(X, y)
        estimator, best_params, cv_score = search.best_estimator_, search.best_params_, float(search.best_score_)
    else:
        estimator = pipe.fit(X, y)
        folds = 0
    smote_info = {"enabled": cfg.smote}
    if cfg.smote:
        sm = estimator.named_steps["smote"]
        smote_info.update(k_requested=cfg.k_neighbors, k_used=int(sm.k_used_), skipped=bool(sm.skipped_), smallest_class=int(smallest))
    return FitResult(estimator, best_params, cv_score, folds, smote_info, time.perf_counter() - t0)


def scores(estimator, X: np.ndarray) -> tuple[list[str], np.ndarray, str]:
    """(classes, scores per class, kind): probabilities where the classifier has them, else decision values."""
    classes = [str(c) for c in estimator.classes_]
    clf = estimator.named_steps["clf"]
    if hasattr(clf, "predict_proba") and getattr(clf, "probability", True):
        return classes, estimator.predict_proba(X), "probability"
    dec = estimator.decision_function(X)
    if dec.ndim == 1:  # binary: one column for the positive class
        dec = np.stack([-dec, dec], axis=1)
    return classes, dec, "decision"
