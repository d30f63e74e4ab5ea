"""Intervals over duplicate groups (a stratified cluster bootstrap): each test fails on the letter-level bootstrap that
counted an empty resample as 0 and averaged each resample over the classes it happened to hold."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from engine.evaluation import binary, metrics


def test_a_perfect_screen_with_3_positive_letters_does_not_get_an_interval_of_0_to_1():
    y = np.array([1, 1, 1] + [0] * 27)
    out = binary.binary_metrics(y, y.astype(float), y, n_boot=1000, seed=0)
    assert out["sensitivity"] == 1.0 and out["ppv"] == 1.0
    assert out["sensitivity_ci"] == [1.0, 1.0]
    assert out["ppv_ci"] == [1.0, 1.0]


def test_a_resample_with_no_predicted_positive_is_left_out_not_counted_as_0():
    y = np.array([1, 0, 0, 0, 0, 0, 0, 0, 0, 0])
    pred = np.array([1, 0, 0, 0, 0, 0, 0, 0, 0, 1])  # one right, one wrong positive
    out = binary.binary_metrics(y, pred.astype(float), pred, n_boot=500, seed=1)
    assert out["ppv_ci"][0] > 0.0  # every resample holds the positive letter, so the PPV is never 0/0 -> 0


def test_the_macro_f1_interval_holds_the_headline_when_the_test_letters_lack_a_class():
    y = ["a"] * 10 + ["b"] * 10
    m = metrics.metrics(y, y, labels=["a", "b", "c"], n_boot=500)  # "c" has no test letter: F1 0 in the headline
    assert m["macro_f1"] == np.float64(2 / 3)
    lo, hi = m["macro_f1_ci"]
    assert lo <= m["macro_f1"] <= hi  # each resample averages a, b and c as the headline does (it was [1, 1])


def test_every_class_is_in_every_resample():
    y = ["a"] * 40 + ["b"] * 2
    p = ["a"] * 40 + ["b", "a"]
    boot = metrics.GroupBootstrap(None, y, len(y), seed=0)
    for _ in range(300):
        w = boot.weights()
        assert w[40:].sum() == 2 and w[:40].sum() == 40
    lo, _ = metrics.bootstrap_macro_f1(y, p, n_boot=500)
    assert lo > 0.48  # never a resample without "b" (where macro-F1 would read ~0.49 or 1.0 by chance)


def _copies(k=3, n=60, seed=0):
    rng = np.random.default_rng(seed)
    y = rng.choice(["a", "b", "c"], n)
    p = np.where(rng.uniform(size=n) < 0.7, y, rng.choice(["a", "b", "c"], n))
    return np.repeat(y, k).tolist(), np.repeat(p, k).tolist(), np.repeat(np.arange(n), k)


def test_copies_of_a_letter_move_together_and_widen_the_interval():
    y, p, groups = _copies()
    lo_g, hi_g = metrics.bootstrap_macro_f1(y, p, n_boot=1000, clusters=groups)
    lo_l, hi_l = metrics.bootstrap_macro_f1(y, p, n_boot=1000)
    assert (hi_g - lo_g) > 1.4 * (hi_l - lo_l)  # ~sqrt(3) wider: 3 copies are one piece of evidence, not three
    T = np.zeros((len(y), 3), dtype=np.int8)
    T[np.arange(len(y)), ["abc".index(v) for v in y]] = 1
    P = np.zeros_like(T)
    P[np.arange(len(y)), ["abc".index(v) for v in p]] = 1
    grouped = metrics.multilabel_metrics(T, P, ["a", "b", "c"], clusters=groups, n_boot=500)["micro_f1_ci"]
    letters = metrics.multilabel_metrics(T, P, ["a", "b", "c"], n_boot=500)["micro_f1_ci"]
    assert grouped[1] - grouped[0] > 1.4 * (letters[1] - letters[0])


def test_an_evaluation_resamples_the_plans_duplicate_groups(cache, default_ds):
    """3 copies of every letter: the scored figures' interval is the group bootstrap's, not the letter bootstrap's."""
    from collections import Counter

    from engine.data.dataset import Dataset
    from tests.conftest import run_step

    per, texts, labs = Counter(), [], []
    for t, lab in zip(default_ds.texts, default_ds.labels, strict=True):
        if per[lab] < 8:
            per[lab] += 1
            texts += [t, t + " ", t + "  "]  # copies once normalised (the duplicate key)
            labs += [lab] * 3
    ds = Dataset(texts, labs, "copies.csv", "letter", "specialty")
    r = run_step(ds, "tfidf", "tfidf", protocol="holdout", n_boot=1000)
    m = r.metrics
    lo, hi = m["macro_f1_ci"]
    y_true = np.array(labs)[np.array(m["test_rows"])]
    pred = json.loads((Path(r.artifact) / "predictions.json").read_text())
    assert len(set(pred["group"])) == len(y_true) // 3
    lo_l, hi_l = metrics.bootstrap_macro_f1(y_true, pred["y_pred"], n_boot=1000, labels=ds.classes)
    assert (hi - lo) > 1.3 * (hi_l - lo_l)


def test_the_paired_bootstrap_resamples_duplicate_groups():
    from engine.evaluation import paired

    y, a, groups = _copies(seed=1)
    _, b, _ = _copies(seed=2)
    rec = {"test_index": list(range(len(y))), "y_true": y, "classes": ["a", "b", "c"]}
    pa, pb = {**rec, "y_pred": a}, {**rec, "y_pred": b}
    letters = paired.paired_comparison(pa, pb, n_boot=1000)["diff_ci"]
    grouped = paired.paired_comparison({**pa, "group": groups.tolist()}, {**pb, "group": groups.tolist()}, n_boot=1000)["diff_ci"]
    assert grouped[1] - grouped[0] > 1.4 * (letters[1] - letters[0])
