"""Evaluation protocols: which letters a classifier is fitted on and which it is scored on.

* `split`: the stratified train/test split (reproducible from the seed; its hash covers data and indices);
* `three_way_split`: that split plus a stratified validation set carved from the training part, for
  fine-tuning's epoch choice; the test letters are never in it;
* `repeated_cv`: repeated stratified K-fold of a whole fitting procedure, given as a function, so the
  protocol knows nothing of the methods it evaluates.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from engine.errors import DataError
from engine.storage import sha256_json


@dataclass(frozen=True)
class Split:
    train: np.ndarray  # indices into the dataset
    test: np.ndarray
    seed: int
    test_size: float
    hash: str


def _stratify_key(ds) -> list[str]:
    if not ds.multi_label:
        return list(ds.labels)
    # Multi-label: stratify on each letter's rarest label, a standard approximation.
    counts = Counter(lab for labs in ds.labels for lab in labs)
    return [min(labs, key=lambda lab: (counts[lab], lab)) for labs in ds.labels]


def split(ds, test_size: float = 0.2, seed: int = 0) -> Split:
    """Stratified train/test split of an engine.data.Dataset, reproducible from the seed; its hash covers data and indices."""
    from sklearn.model_selection import train_test_split

    if not 0 < test_size < 1:
        raise DataError(f"test_size must be between 0 and 1 (a fraction of the letters), got {test_size}.")
    key = _stratify_key(ds)
    n_classes = len(set(key))
    n_test = int(np.ceil(test_size * len(ds)))
    if n_test < n_classes or len(ds) - n_test < n_classes:
        raise DataError(
            f"A test fraction of {test_size} gives {n_test} test letters for {n_classes} labels; every label needs a letter in "
            "both splits. Use a larger test fraction or more letters."
        )
    idx = np.arange(len(ds))
    train, test = train_test_split(idx, test_size=test_size, random_state=seed, stratify=key)
    train, test = np.sort(train), np.sort(test)
    h = sha256_json([ds.data_hash, seed, test_size, train.tolist(), test.tolist()])
    return Split(train, test, seed, test_size, h)


def three_way_split(ds, test_size: float, seed: int, val_size: float) -> tuple[Split, np.ndarray, np.ndarray]:
    """(the train/test split, fitting indices, validation indices); validation comes from the training part only."""
    from sklearn.model_selection import train_test_split

    sp = split(ds, test_size=test_size, seed=seed)
    labels = np.asarray(ds.labels, dtype=str)[sp.train] if not ds.multi_label else None
    n_classes = len(set(labels)) if labels is not None else 1
    n_val = int(math.ceil(val_size * len(sp.train)))
    stratify = labels if labels is not None and n_val >= n_classes and min(np.unique(labels, return_counts=True)[1]) >= 2 else None
    fit_idx, val_idx = train_test_split(sp.train, test_size=val_size, random_state=seed, stratify=stratify)
    return sp, np.sort(fit_idx), np.sort(val_idx)


def repeated_cv(
    X: np.ndarray,
    y,
    fit_predict: Callable[[np.ndarray, np.ndarray, np.ndarray], np.ndarray],
    *,
    seed: int,
    n_splits: int = 5,
    n_repeats: int = 3,
) -> dict:
    """Repeated stratified K-fold of a whole fitting procedure: `fit_predict(X_train, y_train, X_test) -> predictions`
    (a search inside it stays inside each training fold). Macro-F1 per fold, mean ± sd."""
    from sklearn.metrics import f1_score
    from sklearn.model_selection import RepeatedStratifiedKFold

    y = np.asarray(y, dtype=str)
    n_splits = min(n_splits, min(Counter(y).values()))
    if n_splits < 2:
        return {"n_splits": 0, "n_repeats": 0, "scores": [], "mean": None, "sd": None, "note": "skipped: a label has a single letter"}
    rskf = RepeatedStratifiedKFold(n_splits=n_splits, n_repeats=n_repeats, random_state=seed)
    scores = []
    for train, test in rskf.split(X, y):
        pred = fit_predict(X[train], y[train], X[test])
        scores.append(float(f1_score(y[test], pred, average="macro", zero_division=0)))
    return {
        "n_splits": n_splits,
        "n_repeats": n_repeats,
        "scores": scores,
        "mean": float(np.mean(scores)),
        "sd": float(np.std(scores, ddof=1)) if len(scores) > 1 else 0.0,
    }
