"""scikit-learn estimators on embedding vectors: scaler -> optional SMOTE -> SVC or logistic regression.

The pipeline is imbalanced-learn's, so SMOTE resamples only the data a pipeline is fitted on:
inside each cross-validation fold, never the letters it is scored on. Hyper-parameters are
searched by cross-validation inside the training data only, on the inner splits the harness gives
(engine.protocols.plans.inner_splits: stratified, duplicate groups kept whole).

Every fitted estimator answers `predict_proba`: logistic regression natively, the SVC through
`CalibratedClassifierCV` (Platt's sigmoid fitted on cross-validated decision values of the
training data, one final SVC on all of it), so no screen mixes decision values with
probabilities. Its prediction is the most probable label.

Multi-label letters get `OneVsRest` (fit_multilabel): one binary classifier per label with class weights per label
(SMOTE is not defined for label sets), Platt probabilities and one threshold per label, all from iteratively
cross-validation inside the training letters. `fit(..., oof=True)` also returns the training letters'
cross-validated probabilities, from which the harness chooses a two-label task's operating threshold.

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
from sklearn.metrics import f1_score
from sklearn.model_selection import GridSearchCV, KFold
from sklearn.preprocessing import StandardScaler
from sklearn.svm import SVC

from engine.evaluation.binary import best_threshold
from engine.options.groups import ClassifierOptions, key_dict
from engine.protocols import plans

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
    inner_cv_metric: str = "macro_f1"  # what inner_cv_macro_f1 holds (multi-label: micro_f1)
    train_proba: np.ndarray | None = None  # (fit(..., oof=True)) cross-validated probabilities of the training letters


def fit(X: np.ndarray, y, estimator: str, opts: ClassifierOptions, seed: int, groups=None, oof: bool = False) -> FitResult:
    """Fit on training data only: hyper-parameters by cross-validation inside it, then (SVC) the probability calibration.
    The inner splits are engine.protocols.plans.splits_of these letters: stratified, `groups` (each letter's duplicate
    group; None: none) never on both sides; a label with a single letter allows none: no search, and the SVC's sigmoid is
    fitted on the letters themselves. `oof`: also the training letters' probabilities, each predicted by a copy fitted
    without it (the same inner splits, and inside each of them splits of its own), from which a threshold is chosen."""
    t0 = time.perf_counter()
    y = np.asarray(y)
    smallest = min(Counter(y).values())
    cv = plans.splits_of(y, groups, opts.inner_folds, seed) or None
    pipe = build_pipeline(estimator, opts, seed)
    best_params, cv_score = {}, None
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
    train_proba = _out_of_fold(estimator, best_params, opts, X, y, groups, cv, seed) if oof and cv is not None else None
    return FitResult(
        fitted,
        best_params,
        cv_score,
        len(cv) if opts.grid and cv is not None else 0,
        smote_info,
        calibration,
        time.perf_counter() - t0,
        train_proba=train_proba,
    )


def _out_of_fold(estimator: str, params: dict, opts: ClassifierOptions, X, y, groups, cv: list, seed: int) -> np.ndarray:
    """Probabilities of the training letters, each from the chosen pipeline fitted on the other inner splits (an SVC
    calibrated on splits of those letters alone, groups whole), columns in sorted label order."""
    classes = np.unique(y)
    out = np.zeros((len(y), len(classes)))
    for fit_rows, held in cv:
        pipe = build_pipeline(estimator, opts, seed).set_params(**params)
        if estimator == "svc":
            inner = plans.splits_of(y[fit_rows], None if groups is None else np.asarray(groups)[fit_rows], len(cv), seed)
            model, _ = _calibrate(pipe, X[fit_rows], y[fit_rows], inner or None)
        else:
            model = pipe.fit(X[fit_rows], y[fit_rows])
        cols = np.searchsorted(classes, model.classes_)
        out[np.ix_(held, cols)] = model.predict_proba(X[held])
    return out


def _calibrate(pipe: Pipeline, X: np.ndarray, y: np.ndarray, cv) -> tuple[CalibratedClassifierCV, dict]:
    """Platt scaling of an (unfitted) SVC pipeline inside the training data: cross-validated decision values fit the sigmoid,
    one final SVC is fitted on all of it. With a label of a single letter no CV is possible: the sigmoid is then fitted on the
    training letters' own decision values (said in the manifest)."""
    if cv is not None:
        cal = CalibratedClassifierCV(pipe, method=SVC_CALIBRATION, cv=cv, ensemble=False).fit(X, y)
        return cal, {"method": SVC_CALIBRATION, "folds": len(cv), "on": "cross-validated decision values of the training letters"}
    # a frozen SVC's decision values do not depend on the folds: two plain folds just walk through the letters once
    cal = CalibratedClassifierCV(FrozenEstimator(pipe.fit(X, y)), method=SVC_CALIBRATION, cv=list(KFold(2).split(X))).fit(X, y)
    return cal, {"method": SVC_CALIBRATION, "folds": 0, "on": "the training letters themselves (a label has a single training letter)"}


# Multi-label: one binary classifier per label, each with its own decision threshold, all chosen inside the training letters.


class OneVsRest:
    """One binary pipeline per label (scaler -> SVC or logistic regression, class weights per label), probabilities by a
    Platt sigmoid fitted on cross-validated decision values of the training letters, and one threshold per label (the
    best F1 on those same cross-validated probabilities). `predict` gives the 0/1 matrix, letters x labels."""

    def __init__(self, classes: list[str], pipelines: list, platt: np.ndarray, thresholds: np.ndarray):
        self.classes_, self.pipelines, self.platt, self.thresholds_ = list(classes), pipelines, platt, thresholds

    def decision_function(self, X) -> np.ndarray:
        return np.column_stack([_decision(p, X) for p in self.pipelines])

    def predict_proba(self, X) -> np.ndarray:
        return _sigmoid(self.decision_function(X), self.platt)

    def predict(self, X) -> np.ndarray:
        return (self.predict_proba(X) >= self.thresholds_).astype(np.int8)


class _Constant:
    """The decision of a label whose fitting letters are all positive or all negative."""

    def __init__(self, value: float):
        self.value = value

    def decision_function(self, X):
        return np.full(len(X), self.value)


def _decision(pipe, X) -> np.ndarray:
    return np.asarray(pipe.decision_function(X), dtype=float)


def _sigmoid(d: np.ndarray, platt: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-(d * platt[:, 0] + platt[:, 1])))


def binary_pipeline(estimator: str, params: dict, weighted: bool, seed: int):
    """One label's (unfitted) classifier: scaler -> SVC or logistic regression, its classes weighted when `weighted`."""
    opts = ClassifierOptions(smote=False, class_weight="balanced" if weighted else None)
    return build_pipeline(estimator, opts, seed).set_params(**params)


def _fit_binary(X, y, make, params: dict, weighted: bool, seed: int):
    if y.min() == y.max():
        return _Constant(1.0 if y[0] else -1.0)
    return make(params, weighted, seed).fit(X, y)


def _platt(d: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """(slope, intercept) of a sigmoid from decision values to P(label), fitted on cross-validated values."""
    if y.min() == y.max():
        return 1.0, 0.0
    lr = LogisticRegression(C=1e4, max_iter=1000).fit(d.reshape(-1, 1), y)
    return float(lr.coef_[0, 0]), float(lr.intercept_[0])


def fit_multilabel(
    X,
    Y: np.ndarray,
    classes: list[str],
    estimator: str,
    opts: ClassifierOptions,
    seed: int,
    groups=None,
    make=None,
    grid: dict | None = None,
) -> FitResult:
    """Fit a OneVsRest on training letters only (`Y`: letters x labels, 0/1). SMOTE is not defined for multi-label data:
    each label's classifier weights its classes instead (when smote or class_weight is on). C (and the SVC's kernel),
    shared by the labels, is chosen by micro-F1 of cross-validation inside the training letters (engine.protocols.plans
    .splits_of: iteratively stratified, `groups` whole); the chosen parameters' cross-validated probabilities are
    `train_proba`, on which the thresholds are chosen.
    `make(params, weighted, seed)`: one label's unfitted classifier (default: binary_pipeline of `estimator`); `grid`:
    the parameters searched (default: param_grid(estimator) when opts.grid)."""
    t0 = time.perf_counter()
    Y = np.asarray(Y, dtype=np.int8)
    weighted = bool(opts.smote or opts.class_weight)
    make = make or (lambda params, w, s: binary_pipeline(estimator, params, w, s))
    grid = grid if grid is not None else (param_grid(estimator) if opts.grid else {})
    grid = [dict(zip(grid, v)) for v in _product(grid)]
    parts = plans.splits_of(Y, groups, opts.inner_folds, seed)
    best = None
    for params in grid:
        d = np.zeros(Y.shape)
        for fit_idx, val_idx in parts:
            for j in range(Y.shape[1]):
                d[val_idx, j] = _decision(_fit_binary(X[fit_idx], Y[fit_idx, j], make, params, weighted, seed), X[val_idx])
        platt = np.array([_platt(d[:, j], Y[:, j]) for j in range(Y.shape[1])])
        p = _sigmoid(d, platt)
        thresholds = np.array([best_threshold(p[:, j], Y[:, j]) for j in range(Y.shape[1])])
        score = float(f1_score(Y, (p >= thresholds).astype(np.int8), average="micro", zero_division=0))
        if best is None or score > best[0]:
            best = (score, params, platt, thresholds, p)
    score, params, platt, thresholds, train_proba = best
    pipelines = [_fit_binary(X, Y[:, j], make, params, weighted, seed) for j in range(Y.shape[1])]
    model = OneVsRest(classes, pipelines, platt, thresholds)
    return FitResult(
        model,
        params,
        score,
        len(parts),
        {"enabled": False, "why": "SMOTE is not defined for multi-label data", "class_weight": "balanced per label" if weighted else None},
        {
            "method": SVC_CALIBRATION,
            "folds": len(parts),
            "on": "cross-validated decision values of the training letters",
            "thresholds": dict(zip(classes, np.round(thresholds, 6).tolist())),
            "threshold_rule": "best F1 per label",
        },
        time.perf_counter() - t0,
        "micro_f1",
        train_proba=train_proba,
    )


def _product(grid: dict) -> list[tuple]:
    import itertools

    return list(itertools.product(*grid.values()))
