"""Scores of predictions: against scikit-learn, the bootstrap CI (records or letters), the baseline, fold scores,
the corrected resampled t-test, and the paired comparison of two predictions.json records (holdout and cv)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.stats import t as student
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
    assert metrics._macro_f1_from_confusion(cm) == pytest.approx(f1_score(y_true, y_pred, average="macro"))


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


def _sklearn_example_ttest(differences, df, n_train, n_test):
    """scikit-learn's examples/model_selection/plot_grid_search_stats.py (corrected_std + compute_corrected_ttest)."""
    kr = len(differences)
    corrected_std = np.sqrt(np.var(differences, ddof=1) * (1 / kr + n_test / n_train))
    t_stat = np.mean(differences) / corrected_std
    return t_stat, student.sf(np.abs(t_stat), df)  # the example's one-sided p


def test_corrected_ttest_by_hand_and_as_the_sklearn_example():
    # Two folds, differences 0.1 and 0.3, 80 training and 20 test letters: var = 0.02, corrected var =
    # (1/2 + 20/80) * 0.02 = 0.015, t = 0.2 / sqrt(0.015); with 1 df Student's t is Cauchy: p = 1 - 2 atan(|t|) / pi.
    res = metrics.corrected_ttest([0.1, 0.3], n_train=80, n_test=20)
    t_hand = 0.2 / math.sqrt(0.015)
    assert res["t"] == pytest.approx(t_hand) and res["df"] == 1 and res["mean"] == pytest.approx(0.2)
    assert res["p"] == pytest.approx(1 - 2 * math.atan(t_hand) / math.pi)
    half = math.tan(math.pi * (0.975 - 0.5)) * math.sqrt(0.015)  # the Cauchy 97.5% quantile x the corrected se
    assert res["ci"] == pytest.approx([0.2 - half, 0.2 + half])

    diffs = np.array([0.02, 0.01, 0.03, -0.01, 0.02, 0.0, 0.01, 0.02, 0.03, 0.01])
    res = metrics.corrected_ttest(diffs, n_train=72, n_test=18)
    t_ex, p_one_sided = _sklearn_example_ttest(diffs, len(diffs) - 1, 72, 18)
    assert res["t"] == pytest.approx(t_ex) and res["p"] == pytest.approx(2 * p_one_sided)
    plain_p = 2 * student.sf(diffs.mean() / np.sqrt(diffs.var(ddof=1) / len(diffs)), len(diffs) - 1)
    assert res["p"] > plain_p  # the correction widens the uncorrected test
    with pytest.raises(ValueError):
        metrics.corrected_ttest([0.1], 80, 20)


def test_corrected_ttest_with_zero_variance_gives_a_clear_answer():
    same = metrics.corrected_ttest([0.0, 0.0, 0.0], 80, 20)
    assert same["p"] == 1.0 and same["t"] == 0.0 and same["ci"] == [0.0, 0.0]
    shifted = metrics.corrected_ttest([0.05] * 4, 80, 20)
    assert shifted["p"] == 0.0 and shifted["t"] == math.inf and shifted["ci"] == pytest.approx([0.05, 0.05])
    assert not any(isinstance(v, float) and math.isnan(v) for v in (*same.values(), *shifted.values()))


def test_majority_baseline():
    b = metrics.majority_baseline(["a", "a", "b"], ["a", "b", "b", "b"])
    assert b["label"] == "a" and b["accuracy"] == 0.25


def _holdout(y, pred, index=None) -> dict:
    """An older predictions.json: no protocol, repeat or fold."""
    index = list(range(len(y))) if index is None else index
    return {"test_index": index, "y_true": [str(v) for v in y], "y_pred": [str(v) for v in pred], "classes": ["a", "b", "c", "d"]}


def test_holdout_comparison_of_identical_predictions():
    rng = np.random.default_rng(0)
    y = rng.choice(list("abc"), 200)
    pred = np.where(rng.random(200) < 0.7, y, rng.choice(list("abc"), 200))
    res = metrics.paired_comparison(_holdout(y, pred), _holdout(y, pred), list("abc"), n_boot=300)
    assert res["identical"] and res["diff"] == 0 and res["p_bootstrap"] == 1.0 and res["p_mcnemar"] == 1.0
    assert res["protocol"] == "holdout" and res["n_folds"] == 1 and res["n_letters"] == 200 and res["p_corrected"] is None


def test_holdout_comparison_detects_a_clearly_better_classifier_and_not_a_marginal_one():
    rng = np.random.default_rng(1)
    y = rng.choice(list("abcd"), 300)
    good = np.where(rng.random(300) < 0.9, y, rng.choice(list("abcd"), 300))
    poor = np.where(rng.random(300) < 0.5, y, rng.choice(list("abcd"), 300))
    res = metrics.paired_comparison(_holdout(y, good), _holdout(y, poor), list("abcd"), n_boot=500)
    assert res["diff"] > 0.2 and res["diff_ci"][0] > 0 and res["p_bootstrap"] < 0.01 and res["p_mcnemar"] < 0.01
    assert res["diff"] == pytest.approx(f1_score(y, good, average="macro") - f1_score(y, poor, average="macro"))
    almost = good.copy()
    almost[:2] = np.where(almost[:2] == y[:2], "x", almost[:2])  # two more mistakes only
    res = metrics.paired_comparison(_holdout(y, good), _holdout(y, almost), list("abcd"), n_boot=500)
    assert not res["identical"] and res["p_bootstrap"] > 0.05 and res["diff_ci"][0] <= 0 <= res["diff_ci"][1] + 1e-9


def test_comparison_refuses_evaluations_that_share_no_letters():
    y = list("abcabcabca")
    with pytest.raises(ValueError, match="share no letters"):
        metrics.paired_comparison(_holdout(y, y, list(range(10))), _holdout(y, y, list(range(10, 20))), list("abc"))


def _cv(y, pred_by_repeat: list, n_splits: int = 5) -> dict:
    """A cv predictions.json: repeat r shuffles the letters with seed r (the same folds in every evaluation)."""
    n = len(y)
    rec = {"protocol": "cv", "classes": ["a", "b", "c"], "test_index": [], "repeat": [], "fold": [], "y_true": [], "y_pred": []}
    for r, pred in enumerate(pred_by_repeat):
        order = np.random.default_rng(r).permutation(n)
        for f, chunk in enumerate(np.array_split(order, n_splits)):
            for i in chunk:
                for k, v in (("test_index", int(i)), ("repeat", r), ("fold", f), ("y_true", y[i]), ("y_pred", pred[i])):
                    rec[k].append(v)
    return rec


def test_cv_comparison_uses_only_the_common_folds():
    rng = np.random.default_rng(4)
    y = rng.choice(list("abc"), 60)
    a = [np.where(rng.random(60) < 0.85, y, rng.choice(list("abc"), 60)) for _ in range(2)]
    b = [np.where(rng.random(60) < 0.6, y, rng.choice(list("abc"), 60)) for _ in range(2)]
    full = metrics.paired_comparison(_cv(y, a), _cv(y, b), list("abc"), n_boot=300)  # 5x2 vs 5x2
    assert full["protocol"] == "cv" and full["n_folds"] == 10 and full["n_letters"] == 60 and full["n_records"] == 120
    fold_ids = list(zip(_cv(y, a)["repeat"], _cv(y, a)["fold"]))
    fa = metrics.fold_scores(_cv(y, a)["y_true"], _cv(y, a)["y_pred"], fold_ids, list("abc"))
    fb = metrics.fold_scores(_cv(y, b)["y_true"], _cv(y, b)["y_pred"], fold_ids, list("abc"))
    assert full["fold_diffs"] == pytest.approx(np.subtract(fa, fb))
    assert full["p_corrected"] == pytest.approx(metrics.corrected_ttest(np.subtract(fa, fb), 60 - 12, 12)["p"])
    assert full["p_mcnemar"] is None and full["t"] > 0

    common = metrics.paired_comparison(_cv(y, a), _cv(y, b[:1]), list("abc"), n_boot=300)  # 5x2 vs 5x1: repeat 0 only
    assert common["n_folds"] == 5 and common["n_records"] == 60 and common["n_letters"] == 60 and len(common["fold_diffs"]) == 5
    want = f1_score(y, a[0], average="macro") - f1_score(y, b[0], average="macro")
    assert common["diff"] == pytest.approx(want) and common["fold_diffs"] == pytest.approx(full["fold_diffs"][:5])

    other = _cv(y, b)  # repeat 1 of B shuffled otherwise: its folds hold other letters, so they do not count
    order = np.random.default_rng(99).permutation(60)
    for f, chunk in enumerate(np.array_split(order, 5)):
        for pos in range(60, 120):
            if other["test_index"][pos] in set(chunk.tolist()):
                other["fold"][pos] = f
    res = metrics.paired_comparison(_cv(y, a), other, list("abc"), n_boot=300)
    assert res["n_folds"] == 5 and res["diff"] == pytest.approx(common["diff"])


def test_cv_comparison_clusters_a_letters_repeats_and_spots_identical_predictions():
    rng = np.random.default_rng(5)
    y = rng.choice(list("abc"), 40)
    a = [np.where(rng.random(40) < 0.8, y, "a") for _ in range(2)]
    same = metrics.paired_comparison(_cv(y, a), _cv(y, a), list("abc"), n_boot=200)
    assert same["identical"] and same["diff"] == 0 and same["p_corrected"] == 1.0 and same["p_bootstrap"] == 1.0
    assert same["diff_ci"] == [0.0, 0.0] and same["fold_diffs"] == [0.0] * 10


def test_holm_adjustment():
    assert metrics.holm([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])
