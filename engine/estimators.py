"""scikit-learn estimators on embedding vectors: scaler -> optional SMOTE -> SVC or logistic regression.

The pipeline is imbalanced-learn's, so SMOTE resamples only the data a pipeline is fitted on:
inside each cross-validation fold, never the letters it is scored on. Hyper-parameters are
searched with stratified CV inside the training data only.

Every fitted estimator answers `predict_proba`: logistic regression natively, the SVC through
`CalibratedClassifierCV` (Platt's sigmoid fitted on cross-validated decision values of the
training data, one final SVC on all of it), so no screen mixes decision values with
probabilities. Its prediction is the most probable label.

SMOTE needs k_neighbors + 1 letters of a class. `AdaptiveSMOTE` lowers k to fit the smallest
class of the data it sees, and skips oversampling when a class has a single letter; what it did
is kept on the fitted object and reported in the manifest.
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass, field

import numpy as np
from imblearn.over_sampling import SMOTE
from imblearn.pipeline import Pipeline
from sklearn.base import clone
from sklearn.calibration import CalibratedClassifierCV
from sklearn.frozen import FrozenEstimator
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import GridSearchCV, KFold, StratifiedKFold
from sklearn.preprocessing import StandardScaler
from sklearn.svm import SVC

from engine.options import ClassifierOptions, key_dict

ESTIMATORS = ("svc", "logreg")
SVC_CALIBRATION = "sigmoid"


def config_key(estimator: str, opts: ClassifierOptions, seed: int) -> dict:
    """What of an estimator enters cache keys: its name, the seed, the classifier options marked as key fields,
    and for the SVC how its probabilities are made."""
    out = {"method": estimator, "seed": seed, **key_dict(opts)}
    if estimator == "svc":
        out["probabilities"] = f"calibrated-{SVC_CALIBRATION}"
    return out


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


def build_pipeline(estimator: str, opts: ClassifierOptions, seed: int) -> Pipeline:
    steps = [("scale", StandardScaler())]
    if opts.smote:
        steps.append(("smote", AdaptiveSMOTE(k_neighbors=opts.k_neighbors, random_state=seed)))
    if estimator == "svc":
        clf = SVC(kernel="rbf", C=1.0, class_weight=opts.class_weight, random_state=seed)
    elif estimator == "logreg":
        clf = LogisticRegression(C=1.0, class_weight=opts.class_weight, max_iter=2000, random_state=seed)
    else:
        raise ValueError(f"{estimator!r} is not a classifier on embeddings; use one of {', '.join(ESTIMATORS)}.")
    steps.append(("clf", clf))
    return Pipeline(steps)


def param_grid(estimator: str) -> dict:
    if estimator == "svc":
        return {"clf__kernel": ["linear", "rbf"], "clf__C": [0.1, 1.0, 10.0]}
    return {"clf__C": [0.01, 0.1, 1.0, 10.0]}


@dataclass
class FitResult:
    estimator: object  # fitted; answers classes_, predict, predict_proba
    best_params: dict
    inner_cv_macro_f1: float | None
    inner_folds: int
    smote: dict = field(default_factory=dict)
    calibration: dict | None = None
    seconds: float = 0.0


def fit(X: np.ndarray, y, estimator: str, opts: ClassifierOptions, seed: int) -> FitResult:
    """Fit on training data only: hyper-parameters by stratified CV inside it, then (SVC) the probability calibration."""
    t0 = time.perf_counter()
    y = np.asarray(y)
    smallest = min(Counter(y).values())
    folds = min(opts.inner_folds, smallest)
    pipe = build_pipeline(estimator, opts, seed)
    best_params, cv_score = {}, None
    cv = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed) if folds >= 2 else None
    if opts.grid and cv is not None:
        search = GridSearchCV(
            pipe, param_grid(estimator), scoring="f1_macro", cv=cv, n_jobs=1, refit=estimator != "svc", error_score="raise"
        )
        search.fit(X, y)
        best_params, cv_score = search.best_params_, float(search.best_score_)
        fitted = search.best_estimator_ if estimator != "svc" else clone(pipe).set_params(**best_params)
    else:
        fitted = pipe if estimator == "svc" else pipe.fit(X, y)
    calibration = None
    if estimator == "svc":
        fitted, calibration = _calibrate(fitted, X, y, cv)
    final = fitted.calibrated_classifiers_[0].estimator if estimator == "svc" else fitted
    final = getattr(final, "estimator", final)  # a FrozenEstimator wraps the pipeline
    smote_info = {"enabled": opts.smote}
    if opts.smote:
        sm = final.named_steps["smote"]
        smote_info.update(k_requested=opts.k_neighbors, k_used=int(sm.k_used_), skipped=bool(sm.skipped_), smallest_class=int(smallest))
    return FitResult(
        fitted, best_params, cv_score, folds if opts.grid and cv is not None else 0, smote_info, calibration, time.perf_counter() - t0
    )


def _calibrate(pipe: Pipeline, X: np.ndarray, y: np.ndarray, cv) -> tuple[CalibratedClassifierCV, dict]:
    """Platt scaling of an (unfitted) SVC pipeline inside the training data: cross-validated decision values fit the sigmoid,
    one final SVC is fitted on all of it. With a label of a single letter no CV is possible: the sigmoid is then fitted on the
    training letters' own decision values (said in the manifest)."""
    if cv is not None:
        cal = CalibratedClassifierCV(pipe, method=SVC_CALIBRATION, cv=cv, ensemble=False).fit(X, y)
        return cal, {"method": SVC_CALIBRATION, "folds": cv.get_n_splits(), "on": "cross-validated decision values of the training letters"}
    # a frozen SVC's decision values do not depend on the folds: two plain folds just walk through the letters once
    cal = CalibratedClassifierCV(FrozenEstimator(pipe.fit(X, y)), method=SVC_CALIBRATION, cv=list(KFold(2).split(X))).fit(X, y)
    return cal, {"method": SVC_CALIBRATION, "folds": 0, "on": "the training letters themselves (a label has a single training letter)"}
