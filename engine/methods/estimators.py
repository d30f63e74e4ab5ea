"""scikit-learn estimators on embedding vectors: scaler -> optional SMOTE -> SVC or logistic regression.

The pipeline is imbalanced-learn's, so SMOTE resamples only the data a pipeline is fitted on:
inside each cross-validation fold, never the letters it is scored on. Hyper-parameters are
searched by cross-validation inside the training data only, on the inner splits the harness gives
(engine.protocols.plans.inner_splits: stratified, duplicate groups kept whole).

Every fitted estimator answers `predict_proba`: logistic regression natively, the SVC through
`CalibratedClassifierCV` (fitted on cross-validated decision values of the training data, one final SVC on all of
it; Platt's sigmoid for two labels, temperature scaling for more: svc_calibration), so no screen mixes decision values
with probabilities. Its prediction is the most probable label, which for the SVC is its own answer (ties in its
one-vs-one votes go to the larger decision value).

Multi-label letters get `OneVsRest` (fit_multilabel): one binary classifier per label with class weights per label
(SMOTE is not defined for label sets), Platt probabilities and one threshold per label, all from iteratively
cross-validation inside the training letters. `fit(..., oof=True)` also returns the training letters'
cross-validated probabilities, from which the harness chooses a two-label task's operating threshold.

SMOTE needs k_neighbors + 1 letters of a class. `AdaptiveSMOTE` lowers k to fit the smallest
class of the data it sees, and skips oversampling when a class has a single letter; what it did
is kept on the fitted object and reported in the manifest.

SMOTE raises every class to the largest, so it multiplies the rows by labels x largest / letters (`growth`): 8.8 on
MTSamples' 40 specialties, where a fit then sees 34,800 rows for 4,000 letters. `balance` decides, from the training
letters of each fitting alone, SMOTE while that factor is at most `oversample_limit` and balanced class weights (the
same total weight per class, no synthetic rows) above it; the inner folds of that fitting use the same choice. Logistic
regression only: class weights scored lower for the SVC (see `balance`), so it keeps SMOTE, capped: above
the limit the smaller labels are raised to the highest common count that grows the letters by at most the limit
(`smote_target`, counted on the letters each SMOTE step is fitted on), not to the largest label's.

The search is cheap where it can be: logistic regression walks its C grid as a warm-started regularisation path on
each inner split (the scaler and SMOTE fitted once per split, not once per C), and the inner splits of every search
and calibration run in parallel (`inner_jobs`: this process's thread budget). Each fit is seeded, so the result is
the same serial or parallel.
"""

from __future__ import annotations

import os
import sys
import time
from collections import Counter
from dataclasses import dataclass, field

import numpy as np
from imblearn.over_sampling import SMOTE
from imblearn.pipeline import Pipeline
from joblib import Parallel, delayed
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
SVC_CALIBRATION = "sigmoid"  # two labels (and each label of a label set): Platt's sigmoid on the decision value
SVC_CALIBRATION_MULTICLASS = "temperature"  # more labels: one temperature for the softmax of the SVC's decision values
SVC_PROBABILITIES = "calibrated: sigmoid for two labels, temperature for more"  # (cache keys) how the SVC's probabilities are made
LOGREG_SEARCH = "warm-started C path"  # (cache keys) C chosen along one warm-started path per inner split
SVC_SMOTE = "capped at oversample_limit"  # (cache keys) the SVC's SMOTE grows each fitting's letters by at most the limit


def config_key(estimator: str, opts: ClassifierOptions, seed: int) -> dict:
    """What of an estimator enters cache keys: its name, the seed, the classifier options marked as key fields,
    for the SVC how its probabilities are made, and for logistic regression how C is searched."""
    out = {"method": estimator, "seed": seed, **key_dict(opts)}
    if estimator == "svc":
        out["probabilities"] = SVC_PROBABILITIES
        if opts.smote:
            out["smote_growth"] = SVC_SMOTE
    if estimator == "logreg" and opts.grid:
        out["search"] = LOGREG_SEARCH
    return out


def smote_target(counts, limit: float | None) -> int:
    """The letters every smaller label is raised to: the largest label's count when that grows the letters by at most
    `limit` (or no limit), else the highest count T at which raising every label below T to T grows them by at most
    `limit` (the largest labels keep their letters; T = the smallest count when `limit` allows no synthetic letter)."""
    counts = sorted(int(c) for c in counts)
    lo, hi = counts[0], counts[-1]
    if limit is None:
        return hi
    budget = limit * sum(counts)
    while lo < hi:  # the rows after raising every label to T grow with T: the highest T within the budget
        mid = (lo + hi + 1) // 2
        if sum(max(c, mid) for c in counts) <= budget:
            lo = mid
        else:
            hi = mid - 1
    return lo


class AdaptiveSMOTE(SMOTE):
    """SMOTE whose k_neighbors shrinks to the smallest class it is fitted on (and which skips when a class has 1 letter).
    `growth_limit`: the letters it is fitted on grow by at most this factor (`smote_target`: the smaller labels are raised
    to a common count below the largest's); None: every label raised to the largest, as SMOTE does."""

    def __init__(self, *, sampling_strategy="auto", random_state=None, k_neighbors=5, growth_limit: float | None = None):
        super().__init__(sampling_strategy=sampling_strategy, random_state=random_state, k_neighbors=k_neighbors)
        self.growth_limit = growth_limit

    def _fit_resample(self, X, y):
        counts = Counter(y)
        smallest = min(counts.values())
        requested = self.k_neighbors
        self.target_ = smote_target(counts.values(), self.growth_limit)
        if smallest < 2:
            self.k_used_, self.skipped_ = 0, True
            return X, y
        self.k_used_, self.skipped_ = min(requested, smallest - 1), False
        if self.target_ < max(counts.values()):  # capped: the labels below the target raised to it, not to the largest
            self.sampling_strategy_ = {c: self.target_ - n for c, n in sorted(counts.items()) if n < self.target_}
        self.k_neighbors = self.k_used_
        try:
            return super()._fit_resample(X, y)
        finally:
            self.k_neighbors = requested


@dataclass(frozen=True)
class Balance:
    """How a fitting evens out its labels: SMOTE, class weights, or neither (see `balance`)."""

    smote: bool
    class_weight: str | None
    growth: float  # what SMOTE would multiply the training rows by
    cap: float | None = None  # SMOTE raises the smaller labels only so far that the rows grow by at most this (the SVC)

    @property
    def capped(self) -> bool:
        """SMOTE stops short of the largest label on these letters (their growth is above the cap)."""
        return self.smote and self.cap is not None and self.growth > self.cap

    def manifest(self, opts: ClassifierOptions) -> dict:
        out = {"enabled": self.smote, "requested": opts.smote, "growth": round(self.growth, 3), "limit": opts.oversample_limit}
        if opts.smote and not self.smote:
            out["instead"] = "class_weight balanced (SMOTE would multiply the training letters by more than the limit)"
        if self.capped:
            out["capped"] = "the smaller labels raised to a common count below the largest's, growing the letters by at most the limit"
        return out


def growth(y) -> float:
    """The factor SMOTE would multiply these letters by (every label raised to the largest): labels x largest / letters."""
    counts = Counter(np.asarray(y).tolist()).values()
    return len(counts) * max(counts) / sum(counts)


def balance(y, opts: ClassifierOptions, estimator: str = "logreg") -> Balance:
    """SMOTE when asked for and it grows the training letters `y` by at most opts.oversample_limit; above it, logistic
    regression weights its classes (balanced) instead (a user's class_weight always holds). Decided on training letters
    alone. The SVC keeps SMOTE, capped at the limit (`smote_target`; each fitting's letters, inner folds included): its
    probabilities then came from a sigmoid per label fitted on the training letters' own label frequencies, which undid
    class weights (measured on 1,200 MTSamples notes of 8 specialties, growth 2.6, the same folds: macro-F1 0.443 with
    weights against 0.506 with SMOTE; logistic regression 0.510 against 0.502, 15x faster; docs/benchmarks.md); not
    measured again since more than two labels are calibrated by temperature scaling."""
    g = growth(y)
    svc = estimator == "svc"
    smote = opts.smote and (g <= opts.oversample_limit or svc)
    weight = opts.class_weight or ("balanced" if opts.smote and not smote else None)
    return Balance(smote, weight, g, opts.oversample_limit if svc else None)


def inner_jobs(tasks: int) -> int:
    """Processes for `tasks` independent inner fits: this process's thread budget (torch's thread count when torch is
    loaded, which the run worker sets to cores / workers; else OMP_NUM_THREADS, as pytest-xdist workers get; else the
    cores this process may use), never more than the tasks."""
    torch = sys.modules.get("torch")
    if torch is not None:
        budget = torch.get_num_threads()
    elif os.environ.get("OMP_NUM_THREADS", "").isdigit():
        budget = int(os.environ["OMP_NUM_THREADS"])
    else:
        budget = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return max(1, min(budget, tasks))


def build_pipeline(estimator: str, opts: ClassifierOptions, seed: int, bal: Balance | None = None) -> Pipeline:
    """scaler -> SMOTE (when `bal` says so; None: as opts ask) -> the classifier, its classes weighted as `bal` says."""
    bal = bal or Balance(opts.smote, opts.class_weight, 1.0)
    steps = [("scale", StandardScaler())]
    if bal.smote:
        steps.append(("smote", AdaptiveSMOTE(k_neighbors=opts.k_neighbors, random_state=seed, growth_limit=bal.cap)))
    if estimator == "svc":
        clf = SVC(kernel="rbf", C=1.0, class_weight=bal.class_weight, random_state=seed)
    elif estimator == "logreg":
        clf = LogisticRegression(C=1.0, class_weight=bal.class_weight, max_iter=2000, random_state=seed)
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
    bal = balance(y, opts, estimator)
    pipe = build_pipeline(estimator, opts, seed, bal)
    best_params, cv_score = {}, None
    if opts.grid and cv is not None and estimator == "logreg":
        best_params, cv_score = _logreg_search(X, y, cv, opts, seed, bal)
        fitted = pipe.set_params(**best_params).fit(X, y)
    elif opts.grid and cv is not None:
        grid = param_grid(estimator)
        jobs = inner_jobs(len(cv) * int(np.prod([len(v) for v in grid.values()])))
        search = GridSearchCV(pipe, grid, scoring="f1_macro", cv=cv, n_jobs=jobs, refit=False, error_score="raise")
        search.fit(X, y)
        best_params, cv_score = search.best_params_, float(search.best_score_)
        fitted = clone(pipe).set_params(**best_params)
    else:
        fitted = pipe if estimator == "svc" else pipe.fit(X, y)
    calibration = None
    if estimator == "svc":
        fitted, calibration = _calibrate(fitted, X, y, cv)
    final = fitted.calibrated_classifiers_[0].estimator if estimator == "svc" else fitted
    final = getattr(final, "estimator", final)  # a FrozenEstimator wraps the pipeline
    smote_info = bal.manifest(opts)
    if bal.smote:
        sm = final.named_steps["smote"]
        smote_info.update(k_requested=opts.k_neighbors, k_used=int(sm.k_used_), skipped=bool(sm.skipped_), smallest_class=int(smallest))
        if not sm.skipped_:
            smote_info["raised_to"] = int(sm.target_)  # the letters each smaller label was raised to (the final fit)
    train_proba = _out_of_fold(estimator, best_params, opts, X, y, groups, cv, seed, bal) if oof and cv is not None else None
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


def _logreg_search(X, y, cv: list, opts: ClassifierOptions, seed: int, bal: Balance) -> tuple[dict, float]:
    """C of logistic regression by macro-F1 of the inner splits (as GridSearchCV would score them: the mean over splits, the
    first best in grid order), each split walking the C grid upwards as one warm-started regularisation path."""
    Cs = param_grid("logreg")["clf__C"]
    scores = Parallel(n_jobs=inner_jobs(len(cv)))(delayed(_logreg_path)(X, y, fit_rows, held, Cs, opts, seed, bal) for fit_rows, held in cv)
    mean = np.mean(scores, axis=0)
    best = int(np.argmax(mean))
    return {"clf__C": Cs[best]}, float(mean[best])


def _logreg_path(X, y, fit_rows, held, Cs: list, opts: ClassifierOptions, seed: int, bal: Balance) -> list[float]:
    """Macro-F1 on `held` of logistic regression fitted on `fit_rows` at each C (ascending: each fit starts where the more
    regularised one ended); the scaler and SMOTE are fitted once, on `fit_rows` only."""
    pipe = build_pipeline("logreg", opts, seed, bal)
    Xf, yf = X[fit_rows], y[fit_rows]
    for _, step in pipe.steps[:-1]:
        Xf, yf = step.fit_resample(Xf, yf) if hasattr(step, "fit_resample") else (step.fit_transform(Xf), yf)
    Xh = pipe.named_steps["scale"].transform(X[held])
    clf = pipe.named_steps["clf"].set_params(warm_start=True)
    out = {}
    for C in sorted(Cs):
        clf.set_params(C=C).fit(Xf, yf)
        out[C] = float(f1_score(y[held], clf.predict(Xh), average="macro"))
    return [out[C] for C in Cs]


def _out_of_fold(
    estimator: str, params: dict, opts: ClassifierOptions, X, y, groups, cv: list, seed: int, bal: Balance | None = None
) -> np.ndarray:
    """Probabilities of the training letters, each from the chosen pipeline fitted on the other inner splits (an SVC
    calibrated on splits of those letters alone, groups whole), columns in sorted label order."""
    classes = np.unique(y)
    out = np.zeros((len(y), len(classes)))
    for fit_rows, held in cv:
        pipe = build_pipeline(estimator, opts, seed, bal).set_params(**params)
        if estimator == "svc":
            inner = plans.splits_of(y[fit_rows], None if groups is None else np.asarray(groups)[fit_rows], len(cv), seed)
            model, _ = _calibrate(pipe, X[fit_rows], y[fit_rows], inner or None)
        else:
            model = pipe.fit(X[fit_rows], y[fit_rows])
        cols = np.searchsorted(classes, model.classes_)
        out[np.ix_(held, cols)] = model.predict_proba(X[held])
    return out


def svc_calibration(n_classes: int) -> str:
    """How the SVC's decision values become probabilities: Platt's sigmoid for two labels; temperature scaling for more.
    Platt's sigmoid per label, normalised, moves the most probable label away from the SVC's own answer towards the large
    labels (on 3 folds of the 4,966 MTSamples notes, 40 specialties: macro-F1 0.24-0.27 against 0.35-0.39 with one
    temperature); one temperature keeps the order of the decision values, so the most probable label is the SVC's
    answer (where its one-vs-one votes tie: the larger decision value). Figures: docs/benchmarks.md."""
    return SVC_CALIBRATION if n_classes <= 2 else SVC_CALIBRATION_MULTICLASS


def _calibrate(pipe: Pipeline, X: np.ndarray, y: np.ndarray, cv) -> tuple[CalibratedClassifierCV, dict]:
    """Calibration of an (unfitted) SVC pipeline inside the training data (svc_calibration says which): cross-validated
    decision values fit it, one final SVC is fitted on all of it. With a label of a single letter no CV is possible: it
    is then fitted on the training letters' own decision values (said in the manifest)."""
    method = svc_calibration(len(np.unique(y)))
    if cv is not None:
        cal = CalibratedClassifierCV(pipe, method=method, cv=cv, ensemble=False, n_jobs=inner_jobs(len(cv))).fit(X, y)
        return cal, {"method": method, "folds": len(cv), "on": "cross-validated decision values of the training letters"}
    # a frozen SVC's decision values do not depend on the folds: two plain folds just walk through the letters once
    cal = CalibratedClassifierCV(FrozenEstimator(pipe.fit(X, y)), method=method, cv=list(KFold(2).split(X))).fit(X, y)
    return cal, {"method": method, "folds": 0, "on": "the training letters themselves (a label has a single training letter)"}


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
