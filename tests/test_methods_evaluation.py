"""Classifier pipelines (SMOTE adaptation, search inside training) and the metrics."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import f1_score

from engine import evaluation, methods


def _blobs(counts, dim=8, seed=0):
    rng = np.random.default_rng(seed)
    X, y = [], []
    for k, n in enumerate(counts):
        X.append(rng.normal(loc=3 * k, size=(n, dim)))
        y += [f"c{k}"] * n
    return np.vstack(X), np.array(y)


def test_smote_adapts_k_to_the_smallest_class():
    X, y = _blobs([40, 40, 3])
    res = methods.fit(X, y, methods.ClassifierConfig(grid=False))
    assert res.smote["k_used"] == 2 and not res.smote["skipped"]
    assert set(res.estimator.predict(X)) == {"c0", "c1", "c2"}


def test_smote_skips_a_single_letter_class():
    X, y = _blobs([30, 30, 1])
    res = methods.fit(X, y, methods.ClassifierConfig(grid=False))
    assert res.smote["skipped"] and res.smote["k_used"] == 0


def test_smote_does_not_crash_inside_cv_folds():
    # 4 letters in the rare class: inner 3-fold CV sees only 2-3 of them per training fold.
    X, y = _blobs([50, 50, 4])
    res = methods.fit(X, y, methods.ClassifierConfig(method="svc", grid=True))
    assert res.inner_folds == 3 and res.best_params and res.inner_cv_macro_f1 > 0.5


def test_grid_search_never_sees_test_data():
    X, y = _blobs([30, 30])
    res = methods.fit(X[:40], y[:40], methods.ClassifierConfig(method="logreg"))
    # Refit happens on the 40 training rows only.
    assert res.estimator.named_steps["scale"].n_samples_seen_ == 40


@pytest.mark.parametrize("method,kind", [("svc", "decision"), ("logreg", "probability")])
def test_scores_shape(method, kind):
    X, y = _blobs([20, 20, 20])
    est = methods.fit(X, y, methods.ClassifierConfig(method=method, grid=False)).estimator
    classes, s, k = methods.scores(est, X[:5])
    assert classes == ["c0", "c1", "c2"] and s.shape == (5, 3) and k == kind


def test_metrics_match_sklearn_and_ci_brackets_point():
    rng = np.random.default_rng(1)
    y_true = rng.choice(["a", "b", "c"], 200)
    y_pred = np.where(rng.random(200) < 0.7, y_true, rng.choice(["a", "b", "c"], 200))
    m = evaluation.metrics(y_true, y_pred, n_boot=500)
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
    assert evaluation._macro_f1_from_confusion(cm) == pytest.approx(f1_score(y_true, y_pred, average="macro"))


def test_majority_baseline():
    b = evaluation.majority_baseline(["a", "a", "b"], ["a", "b", "b", "b"])
    assert b["label"] == "a" and b["accuracy"] == 0.25


def test_repeated_cv_reports_mean_and_sd():
    X, y = _blobs([20, 20])
    cv = evaluation.repeated_cv(X, y, methods.ClassifierConfig(grid=False), n_splits=4, n_repeats=2)
    assert len(cv["scores"]) == 8 and 0.9 <= cv["mean"] <= 1.0 and cv["sd"] >= 0
