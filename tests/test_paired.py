"""Paired tests (engine.paired): the corrected resampled t-test against scikit-learn's example, the paired comparison of two
predictions.json records (holdout and cv, one label per letter and label sets), Holm's adjustment."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.stats import t as student
from sklearn.metrics import f1_score

from engine.data.labels import indicator
from engine.evaluation import metrics, paired


def _sklearn_example_ttest(differences, df, n_train, n_test):
    """scikit-learn's examples/model_selection/plot_grid_search_stats.py (corrected_std + compute_corrected_ttest)."""
    kr = len(differences)
    corrected_std = np.sqrt(np.var(differences, ddof=1) * (1 / kr + n_test / n_train))
    t_stat = np.mean(differences) / corrected_std
    return t_stat, student.sf(np.abs(t_stat), df)  # the example's one-sided p


def test_corrected_ttest_by_hand_and_as_the_sklearn_example():
    # Two folds, differences 0.1 and 0.3, 80 training and 20 test letters: var = 0.02, corrected var =
    # (1/2 + 20/80) * 0.02 = 0.015, t = 0.2 / sqrt(0.015); with 1 df Student's t is Cauchy: p = 1 - 2 atan(|t|) / pi.
    res = paired.corrected_ttest([0.1, 0.3], n_train=80, n_test=20)
    t_hand = 0.2 / math.sqrt(0.015)
    assert res["t"] == pytest.approx(t_hand) and res["df"] == 1 and res["mean"] == pytest.approx(0.2)
    assert res["p"] == pytest.approx(1 - 2 * math.atan(t_hand) / math.pi)
    half = math.tan(math.pi * (0.975 - 0.5)) * math.sqrt(0.015)  # the Cauchy 97.5% quantile x the corrected se
    assert res["ci"] == pytest.approx([0.2 - half, 0.2 + half])

    diffs = np.array([0.02, 0.01, 0.03, -0.01, 0.02, 0.0, 0.01, 0.02, 0.03, 0.01])
    res = paired.corrected_ttest(diffs, n_train=72, n_test=18)
    t_ex, p_one_sided = _sklearn_example_ttest(diffs, len(diffs) - 1, 72, 18)
    assert res["t"] == pytest.approx(t_ex) and res["p"] == pytest.approx(2 * p_one_sided)
    plain_p = 2 * student.sf(diffs.mean() / np.sqrt(diffs.var(ddof=1) / len(diffs)), len(diffs) - 1)
    assert res["p"] > plain_p  # the correction widens the uncorrected test
    with pytest.raises(ValueError):
        paired.corrected_ttest([0.1], 80, 20)


def test_corrected_ttest_with_zero_variance_gives_a_clear_answer():
    same = paired.corrected_ttest([0.0, 0.0, 0.0], 80, 20)
    assert same["p"] == 1.0 and same["t"] == 0.0 and same["ci"] == [0.0, 0.0]
    shifted = paired.corrected_ttest([0.05] * 4, 80, 20)
    assert shifted["p"] == 0.0 and shifted["t"] == math.inf and shifted["ci"] == pytest.approx([0.05, 0.05])
    assert not any(isinstance(v, float) and math.isnan(v) for v in (*same.values(), *shifted.values()))


def _holdout(y, pred, index=None) -> dict:
    """An older predictions.json: no protocol, repeat or fold."""
    index = list(range(len(y))) if index is None else index
    return {"test_index": index, "y_true": [str(v) for v in y], "y_pred": [str(v) for v in pred], "classes": ["a", "b", "c", "d"]}


def test_holdout_comparison_of_identical_predictions():
    rng = np.random.default_rng(0)
    y = rng.choice(list("abc"), 200)
    pred = np.where(rng.random(200) < 0.7, y, rng.choice(list("abc"), 200))
    res = paired.paired_comparison(_holdout(y, pred), _holdout(y, pred), list("abc"), n_boot=300)
    assert res["identical"] and res["diff"] == 0 and res["p_bootstrap"] == 1.0 and res["p_mcnemar"] == 1.0
    assert res["protocol"] == "holdout" and res["n_folds"] == 1 and res["n_letters"] == 200 and res["p_corrected"] is None


def test_holdout_comparison_detects_a_clearly_better_classifier_and_not_a_marginal_one():
    rng = np.random.default_rng(1)
    y = rng.choice(list("abcd"), 300)
    good = np.where(rng.random(300) < 0.9, y, rng.choice(list("abcd"), 300))
    poor = np.where(rng.random(300) < 0.5, y, rng.choice(list("abcd"), 300))
    res = paired.paired_comparison(_holdout(y, good), _holdout(y, poor), list("abcd"), n_boot=500)
    assert res["diff"] > 0.2 and res["diff_ci"][0] > 0 and res["p_bootstrap"] < 0.01 and res["p_mcnemar"] < 0.01
    assert res["diff"] == pytest.approx(f1_score(y, good, average="macro") - f1_score(y, poor, average="macro"))
    almost = good.copy()
    almost[:2] = np.where(almost[:2] == y[:2], "x", almost[:2])  # two more mistakes only
    res = paired.paired_comparison(_holdout(y, good), _holdout(y, almost), list("abcd"), n_boot=500)
    assert not res["identical"] and res["p_bootstrap"] > 0.05 and res["diff_ci"][0] <= 0 <= res["diff_ci"][1] + 1e-9


def test_comparison_refuses_evaluations_that_share_no_letters():
    y = list("abcabcabca")
    with pytest.raises(ValueError, match="share no letters"):
        paired.paired_comparison(_holdout(y, y, list(range(10))), _holdout(y, y, list(range(10, 20))), list("abc"))


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
    full = paired.paired_comparison(_cv(y, a), _cv(y, b), list("abc"), n_boot=300)  # 5x2 vs 5x2
    assert full["protocol"] == "cv" and full["n_folds"] == 10 and full["n_letters"] == 60 and full["n_records"] == 120
    fold_ids = list(zip(_cv(y, a)["repeat"], _cv(y, a)["fold"]))
    fa = metrics.fold_scores(_cv(y, a)["y_true"], _cv(y, a)["y_pred"], fold_ids, list("abc"))
    fb = metrics.fold_scores(_cv(y, b)["y_true"], _cv(y, b)["y_pred"], fold_ids, list("abc"))
    assert full["fold_diffs"] == pytest.approx(np.subtract(fa, fb))
    assert full["p_corrected"] == pytest.approx(paired.corrected_ttest(np.subtract(fa, fb), 60 - 12, 12)["p"])
    assert full["p_mcnemar"] is None and full["t"] > 0

    common = paired.paired_comparison(_cv(y, a), _cv(y, b[:1]), list("abc"), n_boot=300)  # 5x2 vs 5x1: repeat 0 only
    assert common["n_folds"] == 5 and common["n_records"] == 60 and common["n_letters"] == 60 and len(common["fold_diffs"]) == 5
    want = f1_score(y, a[0], average="macro") - f1_score(y, b[0], average="macro")
    assert common["diff"] == pytest.approx(want) and common["fold_diffs"] == pytest.approx(full["fold_diffs"][:5])

    other = _cv(y, b)  # repeat 1 of B shuffled otherwise: its folds hold other letters, so they do not count
    order = np.random.default_rng(99).permutation(60)
    for f, chunk in enumerate(np.array_split(order, 5)):
        for pos in range(60, 120):
            if other["test_index"][pos] in set(chunk.tolist()):
                other["fold"][pos] = f
    res = paired.paired_comparison(_cv(y, a), other, list("abc"), n_boot=300)
    assert res["n_folds"] == 5 and res["diff"] == pytest.approx(common["diff"])


def test_cv_comparison_clusters_a_letters_repeats_and_spots_identical_predictions():
    rng = np.random.default_rng(5)
    y = rng.choice(list("abc"), 40)
    a = [np.where(rng.random(40) < 0.8, y, "a") for _ in range(2)]
    same = paired.paired_comparison(_cv(y, a), _cv(y, a), list("abc"), n_boot=200)
    assert same["identical"] and same["diff"] == 0 and same["p_corrected"] == 1.0 and same["p_bootstrap"] == 1.0
    assert same["diff_ci"] == [0.0, 0.0] and same["fold_diffs"] == [0.0] * 10


def test_holm_adjustment():
    assert paired.holm([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])


def _sets(truth, pred, fold=None, protocol="holdout") -> dict:
    n = len(truth)
    return {"test_index": list(range(n)), "y_true": truth, "y_pred": pred, "repeat": [0] * n, "fold": fold or [0] * n, "protocol": protocol}


def _label_sets(rng, n: int, keep: float) -> tuple[list, list]:
    """Random label sets over a, b, c (some empty) and a prediction that keeps each (letter, label) decision with `keep`."""
    T = rng.random((n, 3)) < 0.35
    P = np.where(rng.random((n, 3)) < keep, T, ~T)
    as_sets = lambda M: [[lab for lab, on in zip("abc", row, strict=True) if on] for row in M]  # noqa: E731
    return as_sets(T), as_sets(P)


def test_label_sets_compare_the_chosen_f1_as_sklearn_scores_it():
    rng = np.random.default_rng(3)
    truth, good = _label_sets(rng, 150, 0.95)
    _, poor = _label_sets(np.random.default_rng(4), 150, 0.7)
    poor = [p if i % 3 else g for i, (p, g) in enumerate(zip(poor, good, strict=True))]
    T, G, P = (indicator(x, list("abc")) for x in (truth, good, poor))
    for metric, kw in (("micro_f1", {}), ("macro_f1", {}), ("samples_f1", {"zero_division": 1.0})):
        res = paired.paired_comparison(_sets(truth, good), _sets(truth, poor), list("abc"), metric=metric, n_boot=300)
        avg = metric.removesuffix("_f1")
        want = f1_score(T, G, average=avg, **kw) - f1_score(T, P, average=avg, **kw)
        assert res["metric"] == metric and res["diff"] == pytest.approx(want)
        assert res["diff"] > 0.05 and res["diff_ci"][0] > 0 and res["p_bootstrap"] < 0.01
    # McNemar on whole sets: letters only one of the two got entirely right
    res = paired.paired_comparison(_sets(truth, good), _sets(truth, poor), metric="micro_f1", n_boot=100)
    right_g, right_p = (T == G).all(1), (T == P).all(1)
    assert (res["only_a_right"], res["only_b_right"]) == (int(np.sum(right_g & ~right_p)), int(np.sum(~right_g & right_p)))


def test_label_sets_under_cv_use_the_corrected_ttest_and_spot_identical_predictions():
    rng = np.random.default_rng(5)
    truth, a = _label_sets(rng, 100, 0.9)
    _, b = _label_sets(np.random.default_rng(6), 100, 0.8)
    fold = [i % 5 for i in range(100)]
    res = paired.paired_comparison(_sets(truth, a, fold, "cv"), _sets(truth, b, fold, "cv"), metric="micro_f1", n_boot=200)
    T, A, B = (indicator(x, list("abc")) for x in (truth, a, b))
    per_fold = [
        f1_score(T[rows], A[rows], average="micro") - f1_score(T[rows], B[rows], average="micro")
        for rows in (np.flatnonzero(np.array(fold) == f) for f in range(5))
    ]
    assert res["fold_diffs"] == pytest.approx(per_fold) and res["p_corrected"] is not None and res["p_mcnemar"] is None
    assert res["p_corrected"] == pytest.approx(paired.corrected_ttest(per_fold, 80, 20)["p"])
    same = paired.paired_comparison(_sets(truth, a, fold, "cv"), _sets(truth, [list(reversed(x)) for x in a], fold, "cv"), n_boot=50)
    assert same["identical"] and same["diff"] == 0 and same["diff_ci"] == [0.0, 0.0]


def test_a_metric_the_task_has_not_is_refused():
    with pytest.raises(ValueError, match="not a score of this task"):
        paired.paired_comparison(
            _holdout(np.array(list("abab")), np.array(list("abba"))),
            _holdout(np.array(list("abab")), np.array(list("abab"))),
            metric="micro_f1",
        )


def test_corrected_ttest_uses_the_real_training_size_when_the_training_side_was_cut():
    """labels_per_class: each fold trained on 6 letters, not the 48 left out of its test fold; the corrected variance
    (1/k + n_test/n_train) grows, so p does too (the review's 0.047 vs 0.158)."""
    rng = np.random.default_rng(4)
    y = rng.choice(list("abc"), 60)
    a = [np.where(rng.random(60) < 0.75, y, rng.choice(list("abc"), 60)) for _ in range(2)]
    b = [np.where(rng.random(60) < 0.6, y, rng.choice(list("abc"), 60)) for _ in range(2)]
    sizes = {(r, f): 6 for r in range(2) for f in range(5)}
    cut = paired.paired_comparison(_cv(y, a), _cv(y, b), list("abc"), n_boot=100, train_sizes=sizes)
    every = paired.paired_comparison(_cv(y, a), _cv(y, b), list("abc"), n_boot=100)
    assert cut["n_train"] == 6 and every["n_train"] == 48
    assert cut["p_corrected"] == pytest.approx(paired.corrected_ttest(cut["fold_diffs"], 6, 12)["p"])
    assert cut["p_corrected"] > every["p_corrected"]
    assert cut["corrected_ci"][1] - cut["corrected_ci"][0] > every["corrected_ci"][1] - every["corrected_ci"][0]
    partial = paired.paired_comparison(_cv(y, a), _cv(y, b), list("abc"), n_boot=100, train_sizes={(0, 0): 6})
    assert partial["n_train"] == 48  # sizes of some folds only: the letters left out of the test, as for older artifacts
