"""Scores of predictions: against scikit-learn, the bootstrap CI, the baseline, the paired test."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import f1_score

from engine import metrics


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


def test_bootstrap_matches_sklearn_on_a_resample():
    # The vectorised macro-F1 used in the bootstrap equals scikit-learn's on the same data.
    y_true, y_pred = list("aabbccd"), list("abbbcca")
    labels = sorted(set(y_true) | set(y_pred))
    idx = {lab: i for i, lab in enumerate(labels)}
    cm = np.zeros((len(labels),) * 2, int)
    for t, p in zip(y_true, y_pred):
        cm[idx[t], idx[p]] += 1
    assert metrics._macro_f1_from_confusion(cm) == pytest.approx(f1_score(y_true, y_pred, average="macro"))


def test_majority_baseline():
    b = metrics.majority_baseline(["a", "a", "b"], ["a", "b", "b", "b"])
    assert b["label"] == "a" and b["accuracy"] == 0.25


def test_paired_test_sees_no_difference_between_identical_predictions():
    rng = np.random.default_rng(0)
    y = rng.choice(list("abc"), 200)
    pred = np.where(rng.random(200) < 0.7, y, rng.choice(list("abc"), 200))
    res = metrics.paired_macro_f1_test(y, pred, pred, n_boot=300)
    assert res["diff"] == 0 and res["p_bootstrap"] == 1.0 and res["p_mcnemar"] == 1.0


def test_paired_test_detects_a_clearly_better_classifier_and_not_a_marginal_one():
    rng = np.random.default_rng(1)
    y = rng.choice(list("abcd"), 300)
    good = np.where(rng.random(300) < 0.9, y, rng.choice(list("abcd"), 300))
    poor = np.where(rng.random(300) < 0.5, y, rng.choice(list("abcd"), 300))
    res = metrics.paired_macro_f1_test(y, good, poor, n_boot=500)
    assert res["diff"] > 0.2 and res["diff_ci"][0] > 0 and res["p_bootstrap"] < 0.01 and res["p_mcnemar"] < 0.01
    almost = good.copy()
    almost[:2] = np.where(almost[:2] == y[:2], "x", almost[:2])  # two more mistakes only
    res = metrics.paired_macro_f1_test(y, good, almost, n_boot=500)
    assert res["p_bootstrap"] > 0.05 and res["diff_ci"][0] <= 0 <= res["diff_ci"][1] + 1e-9


def test_holm_adjustment():
    assert metrics.holm([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])
