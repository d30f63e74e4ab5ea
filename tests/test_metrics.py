"""Scores of predictions: against scikit-learn, the bootstrap CI (records or letters), the baseline, fold scores
(paired tests: tests/test_paired.py)."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import f1_score

from engine.evaluation import metrics


def test_metrics_match_sklearn_and_ci_brackets_point():
    rng = np.random.default_rng(1)
    y_true = rng.choice(["a", "b", "c"], 200)
    y_pred = np.where(rng.random(200) < 0.7, y_true, rng.choice(["a", "b", "c"], 200))
    m = metrics.metrics(y_true, y_pred, n_boot=500)
    assert m["macro_f1"] == pytest.approx(f1_score(y_true, y_pred, average="macro"))
    lo, hi = m["macro_f1_ci"]
    assert lo < m["macro_f1"] < hi and hi - lo < 0.2
    assert sum(sum(r) for r in m["confusion_matrix"]["matrix"]) == 200
    assert set(m["per_class"]) == {"a", "b", "c"}


def test_labels_count_a_missing_class_as_zero():
    # A 3-class task whose test letters lack class c: every present letter is right, yet c scores 0.
    y = ["a", "a", "b", "b", "b"]
    m = metrics.metrics(y, y, labels=["a", "b", "c"], n_boot=50)
    assert m["macro_f1"] == pytest.approx(2 / 3) and m["macro_f1"] < 1.0
    assert m["macro_f1"] == pytest.approx(f1_score(y, y, labels=["a", "b", "c"], average="macro", zero_division=0))
    assert m["per_class"]["c"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 0}
    assert m["confusion_matrix"]["labels"] == ["a", "b", "c"] and m["accuracy"] == 1.0
    # a class predicted for no letter is kept too; without labels, today's behaviour (the union of what was seen)
    assert metrics.metrics(["a", "c"], ["a", "a"], labels=["a", "b", "c"], n_boot=10)["per_class"]["b"]["f1"] == 0.0
    plain = metrics.metrics(y, y, n_boot=50)
    assert plain["macro_f1"] == 1.0 and set(plain["per_class"]) == {"a", "b"}


def test_clustered_bootstrap_resamples_letters_not_records():
    rng = np.random.default_rng(2)
    y = rng.choice(list("abc"), 80)
    p = np.where(rng.random(80) < 0.7, y, rng.choice(list("abc"), 80))
    once = metrics.metrics(y, p, n_boot=400)["macro_f1_ci"]
    # Each letter scored three times (3 repeats, same predictions): records are not independent.
    y3, p3, letters = np.tile(y, 3), np.tile(p, 3), np.tile(np.arange(80), 3)
    clustered = metrics.metrics(y3, p3, clusters=letters, n_boot=400)["macro_f1_ci"]
    records = metrics.metrics(y3, p3, n_boot=400)["macro_f1_ci"]
    assert clustered != records
    assert clustered == pytest.approx(once)  # resampling the 80 letters, whatever their number of records
    assert clustered[1] - clustered[0] > 1.3 * (records[1] - records[0])  # treating records as letters understates the spread
    with pytest.raises(ValueError, match="one id per record"):
        metrics.bootstrap_macro_f1(y, p, clusters=[0, 1])


def test_bootstrap_matches_sklearn_on_a_resample():
    # The vectorised macro-F1 used in the bootstrap equals scikit-learn's on the same data.
    y_true, y_pred = list("aabbccd"), list("abbbcca")
    labels = sorted(set(y_true) | set(y_pred))
    idx = {lab: i for i, lab in enumerate(labels)}
    cm = np.zeros((len(labels),) * 2, int)
    for t, p in zip(y_true, y_pred):
        cm[idx[t], idx[p]] += 1
    assert metrics.f1_per_class(cm).mean() == pytest.approx(f1_score(y_true, y_pred, labels=labels, average="macro", zero_division=0))


def test_fold_scores_are_sklearn_macro_f1_per_fold_in_sorted_order():
    rng = np.random.default_rng(3)
    y = rng.choice(list("abc"), 90)
    p = np.where(rng.random(90) < 0.6, y, rng.choice(list("abc"), 90))
    folds = [(int(r), int(f)) for r, f in zip(rng.integers(0, 2, 90), rng.integers(0, 3, 90))]
    got = metrics.fold_scores(y, p, folds, ["a", "b", "c", "d"])
    want = []
    for fid in sorted(set(folds)):
        sel = [i for i, f in enumerate(folds) if f == fid]
        want.append(f1_score(y[sel], p[sel], labels=["a", "b", "c", "d"], average="macro", zero_division=0))
    assert got == pytest.approx(want) and len(got) == len(set(folds))


def test_majority_baseline():
    b = metrics.majority_baseline(["a", "a", "b"], ["a", "b", "b", "b"])
    assert b["label"] == "a" and b["accuracy"] == 0.25
