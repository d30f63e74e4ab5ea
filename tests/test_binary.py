"""Two-label tasks: the positive label, the operating threshold chosen on training letters, and the clinical figures."""

from __future__ import annotations

import json

import numpy as np
import pytest
from sklearn.metrics import average_precision_score, roc_auc_score

from engine.data.dataset import Dataset
from engine.errors import DataError
from engine.evaluation import binary
from engine.methods import classifiers
from tests.conftest import cli, run_step, write_csv


def test_positive_label_is_the_rarer_unless_chosen():
    assert binary.positive_label(["no", "yes"], ["no"] * 5 + ["yes"] * 2, None) == "yes"
    assert binary.positive_label(["a", "b"], ["a", "b"], None) == "b"  # a tie: the last in sorted order
    assert binary.positive_label(["no", "yes"], ["no"] * 5 + ["yes"] * 2, "no") == "no"
    with pytest.raises(DataError, match="not a label"):
        binary.positive_label(["no", "yes"], ["no", "yes"], "maybe")


def test_threshold_rules():
    rng = np.random.default_rng(0)
    y = (rng.random(400) < 0.3).astype(int)
    p = np.clip(0.3 * y + rng.normal(0.35, 0.15, 400), 0, 1)
    t_f1 = binary.choose_threshold(p, y, "best-f1")
    f1 = {c: 2 * ((p >= c) & (y == 1)).sum() / ((p >= c).sum() + y.sum()) for c in np.unique(p)}
    assert f1[t_f1] == pytest.approx(max(f1.values()))
    t_sens = binary.choose_threshold(p, y, "sensitivity", 0.9)
    assert ((p >= t_sens) & (y == 1)).sum() / y.sum() >= 0.9
    assert all(((p >= c) & (y == 1)).sum() / y.sum() < 0.9 for c in np.unique(p) if c > t_sens)  # the highest such
    t_spec = binary.choose_threshold(p, y, "specificity", 0.9)
    assert ((p < t_spec) & (y == 0)).sum() / (y == 0).sum() >= 0.9
    assert t_sens < t_f1 < t_spec or t_sens <= t_f1 <= t_spec


def test_binary_metrics_match_scikit_learn():
    rng = np.random.default_rng(1)
    y = (rng.random(300) < 0.4).astype(int)
    p = np.clip(0.35 * y + rng.normal(0.3, 0.2, 300), 0, 1)
    pred = (p >= 0.45).astype(int)
    m = binary.binary_metrics(y, p, pred, n_boot=300, seed=0)
    tp, fn = ((pred == 1) & (y == 1)).sum(), ((pred == 0) & (y == 1)).sum()
    tn, fp = ((pred == 0) & (y == 0)).sum(), ((pred == 1) & (y == 0)).sum()
    assert m["sensitivity"] == pytest.approx(tp / (tp + fn)) and m["specificity"] == pytest.approx(tn / (tn + fp))
    assert m["ppv"] == pytest.approx(tp / (tp + fp)) and m["npv"] == pytest.approx(tn / (tn + fn))
    assert m["roc_auc"] == pytest.approx(roc_auc_score(y, p)) and m["pr_auc"] == pytest.approx(average_precision_score(y, p))
    for k in ("sensitivity", "specificity", "ppv", "npv", "roc_auc", "pr_auc"):
        lo, hi = m[f"{k}_ci"]
        assert lo <= m[k] <= hi and hi - lo > 0.01, k


def _binary_ds(default_ds) -> Dataset:
    """One specialty against the others (the rarer label, so the positive one): a screening question."""
    target = sorted(set(default_ds.labels))[0]
    texts, labels = [], []
    for t, lab in zip(default_ds.texts[:240], default_ds.labels[:240]):
        texts.append(t[:500])
        labels.append("refer" if lab == target else "no")
    return Dataset(texts, labels, "binary.csv", "text", "label")


@pytest.mark.parametrize("method", ["tfidf", "logreg"])
def test_binary_step_tunes_its_threshold_on_training_letters(cache, default_ds, tiny_encoder, method):
    ds = _binary_ds(default_ds)
    model = "tfidf" if method == "tfidf" else tiny_encoder
    res = run_step(ds, model, method, protocol="holdout", max_length=64, grid=False, n_boot=100, threshold_rule="sensitivity")
    m = res.metrics
    assert m["task"] == "binary" and m["positive_label"] == "refer"
    for k in ("sensitivity", "specificity", "roc_auc", "pr_auc"):
        assert 0 <= m[k] <= 1 and len(m[f"{k}_ci"]) == 2
    assert m["threshold_rule"] == "sensitivity" and m["threshold_target"] == 0.9
    assert m["threshold"] == m["fold_thresholds"][0] != 0.5
    pred = json.loads((__import__("pathlib").Path(res.artifact) / "predictions.json").read_text())
    # the stored classifier decides at the same threshold as the scored predictions
    clf = classifiers.load(res.artifact)
    assert clf.threshold == pytest.approx(m["threshold"]) and clf.positive_label == "refer"
    assert clf.predict([ds.texts[i] for i in pred["test_index"]]) == pred["y_pred"]
    # another rule is another evaluation (the threshold enters the cache key)
    other = run_step(ds, model, method, protocol="holdout", max_length=64, grid=False, n_boot=100, threshold_rule="specificity")
    assert other.artifact != res.artifact and other.metrics["threshold"] >= m["threshold"]


def test_evaluate_json_of_a_binary_task(cache, tmp_path, default_ds):
    ds = _binary_ds(default_ds)
    csv = write_csv(tmp_path / "binary.csv", [{"text": t, "label": lab} for t, lab in zip(ds.texts, ds.labels)])
    out = tmp_path / "out.json"
    r = cli("evaluate", "--data", str(csv), "--model", "tfidf", "--protocol", "holdout", "--n-boot", "100", "--json", str(out))
    assert r.returncode == 0, r.stderr
    assert "positive label 'refer' at threshold" in r.stdout and "ROC-AUC" in r.stdout
    d = json.loads(out.read_text())
    for k in ("sensitivity", "specificity", "roc_auc", "pr_auc"):
        assert k in d and len(d[f"{k}_ci"]) == 2
    assert isinstance(d["threshold"], float) and d["task"] == "binary" and "macro_f1_ci" in d
