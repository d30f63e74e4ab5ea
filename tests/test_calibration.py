"""Calibration figures: known answers (a calibrated predictor has ECE near 0 and slope near 1), and the keys every
evaluation carries, for one label among several, two labels and label sets."""

from __future__ import annotations

import json
from collections import Counter

import numpy as np
import pytest

from engine.evaluation import calibration

KEYS = ("brier", "brier_ci", "ece", "ece_ci", "calibration_bins", "brier_per_label", "ece_per_label")


def _calibrated(n=20000, seed=0):
    rng = np.random.default_rng(seed)
    p = rng.uniform(0.02, 0.98, n)
    return p, (rng.uniform(size=n) < p).astype(int)


def test_a_calibrated_predictor_has_ece_near_0_and_slope_near_1():
    p, y = _calibrated()
    assert calibration.ece(p, y) < 0.02
    a, b = calibration.logistic_recalibration(p, y)
    assert abs(a) < 0.05 and abs(b - 1) < 0.05
    bins = calibration.reliability_bins(p, y)
    assert len(bins) == 10 and sum(b["n"] for b in bins) == len(p)
    assert all(abs(b["observed"] - b["mean_predicted"]) < 0.05 for b in bins)


def test_overconfident_predictions_have_slope_below_1_and_a_known_brier():
    p, y = _calibrated()
    logit = np.log(p / (1 - p))
    extreme = 1 / (1 + np.exp(-2 * logit))  # twice as sure as it should be
    a, b = calibration.logistic_recalibration(extreme, y)
    assert abs(b - 0.5) < 0.05 and abs(a) < 0.05
    assert calibration.ece(extreme, y) > 0.05
    # Brier known answer: constant 0.5 scores 0.25 whatever the truth
    out = calibration.calibration(np.full((4, 2), 0.5), np.eye(2)[[0, 1, 1, 0]], ["a", "b"], kind="binary", positive="b", n_boot=0)
    assert out["brier"] == pytest.approx(0.25) and out["ece"] == pytest.approx(0.0)
    assert out["calibration_bins"] == [{"low": 0.5, "high": 0.6, "n": 4.0, "mean_predicted": 0.5, "observed": 0.5}]


def test_multiclass_brier_sums_the_classes_and_ece_reads_the_top_label():
    P = np.array([[1.0, 0.0, 0.0], [0.0, 0.5, 0.5]])
    Y = np.array([[1, 0, 0], [0, 1, 0]])
    out = calibration.calibration(P, Y, ["a", "b", "c"], kind="single", n_boot=50, clusters=[0, 1], strata=[0, 1])
    assert out["brier"] == pytest.approx((0 + 0.25 + 0.25) / 2)
    assert out["brier_per_label"] == pytest.approx({"a": 0.0, "b": 0.125, "c": 0.125})
    # top labels: 1.0 right; 0.5 (b, the first of the tie) right -> observed 1 in both bins
    assert out["ece"] == pytest.approx((0 + 0.5) / 2)
    assert len(out["brier_ci"]) == 2 and out["brier_ci"][0] <= out["brier"] <= out["brier_ci"][1]


def test_perfectly_separated_letters_give_no_slope_instead_of_a_huge_number():
    _, b = calibration.logistic_recalibration([0.9, 0.95, 0.1, 0.05], [1, 1, 0, 0])
    assert np.isnan(b)
    P = np.array([[0.1, 0.9], [0.05, 0.95], [0.9, 0.1], [0.95, 0.05]])
    out = calibration.calibration(P, np.eye(2)[[1, 1, 0, 0]], ["a", "b"], kind="binary", positive="b", n_boot=50)
    assert out["calibration_slope"] is None and out["calibration_slope_ci"] is None  # null in JSON, not NaN
    json.dumps(out, allow_nan=False)


def _small(default_ds, labels=None):
    from engine.data.dataset import Dataset

    per, texts, labs = Counter(), [], []
    for t, lab in zip(default_ds.texts, default_ds.labels, strict=True):
        if (labels is None or lab in labels) and per[lab] < 12:
            per[lab] += 1
            texts.append(t)
            labs.append(lab)
    return Dataset(texts, labs, "letters.csv", "letter", "specialty")


def _check(m: dict, n_labels: int) -> None:
    for k in KEYS:
        assert k in m, k
    assert m["brier"] >= 0 and 0 <= m["ece"] <= 1
    assert m["brier_ci"][0] <= m["brier"] <= m["brier_ci"][1] + 1e-9
    assert len(m["brier_per_label"]) == n_labels
    for b in m["calibration_bins"]:
        assert set(b) == {"low", "high", "n", "mean_predicted", "observed"} and b["low"] <= b["mean_predicted"] <= b["high"]


def test_every_task_kind_carries_the_calibration_keys(cache, default_ds, tiny_encoder, capsys):
    from tests.conftest import run_step
    from tests.test_multilabel import multi_label_ds

    single = _small(default_ds)
    m = run_step(single, "tfidf", "tfidf", protocol="holdout", n_boot=100).metrics
    _check(m, len(single.classes))
    assert "calibration_slope" not in m

    two = _small(default_ds, labels=sorted(set(default_ds.labels))[:2])
    for model, method in (("tfidf", "tfidf"), (tiny_encoder, "logreg")):
        m = run_step(two, model, method, protocol="holdout", n_boot=100, max_length=64, grid=False).metrics
        assert m["task"] == "binary"
        _check(m, 2)
        for k in ("calibration_intercept", "calibration_slope", "calibration_intercept_ci", "calibration_slope_ci"):
            assert k in m, k
    from engine.cli.terminal import print_metrics

    print_metrics("logreg", m)
    assert f"calibration: Brier {m['brier']:.3f} ({m['brier_ci'][0]:.3f} to" in capsys.readouterr().out

    ml = multi_label_ds(default_ds)
    m = run_step(ml, "tfidf", "tfidf", protocol="holdout", n_boot=100).metrics
    assert m["task"] == "multi-label"
    _check(m, len(ml.classes))


def test_the_reliability_diagram_draws_each_evaluations_bins_with_their_counts():
    from types import SimpleNamespace

    from ui import calibration as ui_calibration
    from ui import charts

    p, y = _calibrated(2000)
    m = calibration.calibration(np.column_stack([1 - p, p]), np.eye(2)[y], ["no", "yes"], kind="binary", positive="yes", n_boot=100)
    evals = [SimpleNamespace(label="tfidf", metrics=m), SimpleNamespace(label="old", metrics={"macro_f1": 0.5})]
    table = ui_calibration.figures_table(evals)
    assert list(table["Evaluation"]) == ["tfidf"] and table["Slope (95% CI)"][0].startswith(f"{m['calibration_slope']:.3f} (")
    fig = charts.reliability_chart(ui_calibration.reliability_rows(evals))
    line = fig.data[1]
    assert list(line.x) == [b["mean_predicted"] for b in m["calibration_bins"]] and list(line.y) == [
        b["observed"] for b in m["calibration_bins"]
    ]
    assert [int(t) for t in line.text] == [int(b["n"]) for b in m["calibration_bins"]] and sum(int(t) for t in line.text) == 2000
    assert fig.layout.xaxis.title.text and fig.layout.yaxis.title.text and fig.layout.title.text
