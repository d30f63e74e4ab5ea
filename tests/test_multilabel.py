"""Multi-label tasks: the scores, the folds, one classifier and one threshold per label, the steps and the stored classifier."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from sklearn.metrics import f1_score, hamming_loss

from engine.data.dataset import Dataset
from engine.data.labels import indicator
from engine.evaluation import metrics
from engine.methods import classifiers, estimators
from engine.options.groups import ClassifierOptions, ProtocolOptions
from engine.protocols import plans
from tests.conftest import run_step


def multi_label_ds(default_ds, n_single: int = 14) -> Dataset:
    """Letters of three specialties (A, B, C) alone, pairs of them joined (two labels), and letters of a fourth
    specialty with no label: every kind of outcome a multi-label task has."""
    by = {}
    for t, lab in zip(default_ds.texts, default_ds.labels):
        by.setdefault(lab, []).append(t[:400])
    a, b, c, d = sorted(by)[:4]
    texts, labels = [], []
    for lab in (a, b, c):
        texts += by[lab][:n_single]
        labels += [(lab,)] * n_single
    for i in range(8):
        texts += [by[a][n_single + i] + " " + by[b][n_single + i], by[b][n_single + 8 + i] + " " + by[c][n_single + i]]
        labels += [tuple(sorted((a, b))), tuple(sorted((b, c)))]
    texts += by[d][:10]
    labels += [()] * 10
    return Dataset(texts, labels, "multi.jsonl", "text", "labels", multi_label=True)


def test_multilabel_scores_match_scikit_learn():
    rng = np.random.default_rng(0)
    T = (rng.random((80, 4)) < 0.3).astype(np.int8)
    P = np.where(rng.random((80, 4)) < 0.8, T, 1 - T).astype(np.int8)
    T[:5], P[:5] = 0, 0  # letters with no label, none predicted: samples-F1 counts them 1
    m = metrics.multilabel_metrics(T, P, ["a", "b", "c", "d"], n_boot=200, seed=1)
    assert m["micro_f1"] == pytest.approx(f1_score(T, P, average="micro"))
    assert m["macro_f1"] == pytest.approx(f1_score(T, P, average="macro"))
    assert m["samples_f1"] == pytest.approx(f1_score(T, P, average="samples", zero_division=1.0))
    assert m["hamming_loss"] == pytest.approx(hamming_loss(T, P))
    assert m["subset_accuracy"] == pytest.approx(np.mean((T == P).all(1)))
    for name in ("micro_f1", "macro_f1", "samples_f1"):
        lo, hi = m[f"{name}_ci"]
        assert lo < m[name] < hi, name
    assert [r["label"] for r in m["per_label"]] == ["a", "b", "c", "d"]
    assert m["per_label"][1]["support"] == int(T[:, 1].sum())
    # the bootstrap's own scorer agrees with scikit-learn on the unweighted data
    micro, macro, samples = metrics.multilabel_scores(T, P)
    assert (micro, macro, samples) == pytest.approx((m["micro_f1"], m["macro_f1"], m["samples_f1"]))


def test_best_threshold_is_the_f1_optimum():
    p = np.array([0.9, 0.8, 0.7, 0.6, 0.4, 0.3, 0.2, 0.1])
    y = np.array([1, 1, 0, 1, 0, 0, 1, 0])
    t = estimators.best_threshold(p, y)
    f1 = {c: f1_score(y, p >= c) for c in p}
    assert f1[t] == max(f1.values())
    assert t == 0.6
    assert estimators.best_threshold(p, np.zeros(8, dtype=int)) == 0.5


def test_multilabel_folds_keep_every_label_and_the_no_label_letters_spread(default_ds):
    ds = multi_label_ds(default_ds)
    texts = list(ds.texts)
    texts[1] = texts[0]  # an exact copy: its group stays whole
    ds = Dataset(texts, ds.labels, ds.source, "text", "labels", multi_label=True)
    plan = plans.plan(ds, ProtocolOptions(protocol="cv", cv_folds=3, cv_repeats=1))
    Y = indicator(ds.labels, ds.classes)
    for f in plan.folds:
        assert Y[f.test].sum(0).min() >= 1  # every label in every test fold
        assert 2 <= (Y[f.test].sum(1) == 0).sum() <= 5  # the 10 letters with no label spread over 3 folds
        assert (0 in f.test) == (1 in f.test)
    assert sorted(np.concatenate([f.test for f in plan.folds]).tolist()) == list(range(len(ds)))
    hold = plans.plan(ds, ProtocolOptions(protocol="holdout", test_size=0.25))
    assert Y[hold.folds[0].test].sum(0).min() >= 1


def test_fit_multilabel_learns_and_tunes_thresholds_on_training_letters_only():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(240, 12))
    Y = (X[:, :3] > 0.6).astype(np.int8)  # three labels, each read from one coordinate
    fitted = estimators.fit_multilabel(X[:160], Y[:160], ["a", "b", "c"], "logreg", ClassifierOptions(), 0)
    P = fitted.estimator.predict(X[160:])
    assert P.shape == (80, 3) and set(np.unique(P)) <= {0, 1}
    assert f1_score(Y[160:], P, average="micro") > 0.8
    proba = fitted.estimator.predict_proba(X[160:])
    assert ((proba >= 0) & (proba <= 1)).all()
    assert np.array_equal(P, (proba >= fitted.estimator.thresholds_).astype(np.int8))
    # other test letters change nothing: thresholds come from the training letters alone
    again = estimators.fit_multilabel(X[:160], Y[:160], ["a", "b", "c"], "logreg", ClassifierOptions(), 0)
    assert np.array_equal(again.estimator.thresholds_, fitted.estimator.thresholds_)
    assert fitted.smote["enabled"] is False and "not defined" in fitted.smote["why"]


@pytest.mark.parametrize("method", ["svc", "tfidf"])
def test_multilabel_step_scores_and_stores_a_classifier(cache, default_ds, tiny_encoder, method):
    ds = multi_label_ds(default_ds)
    model = "tfidf" if method == "tfidf" else tiny_encoder
    res = run_step(ds, model, method, protocol="holdout", test_size=0.3, max_length=64, grid=False, n_boot=100)
    m = res.metrics
    assert m["task"] == "multi-label"
    for key in ("micro_f1", "micro_f1_ci", "macro_f1", "macro_f1_ci", "samples_f1", "subset_accuracy", "hamming_loss"):
        assert key in m
    assert [r["label"] for r in m["per_label"]] == ds.classes
    test_labels = [ds.labels[i] for i in m["test_rows"]]
    assert [r["support"] for r in m["per_label"]] == indicator(test_labels, ds.classes).sum(0).tolist()
    pred = json.loads((Path(res.artifact) / "predictions.json").read_text())
    assert all(isinstance(v, list) for v in pred["y_true"] + pred["y_pred"])
    assert any(v == [] for v in pred["y_true"])  # letters with no label are scored, as an empty set
    clf = classifiers.load(res.artifact)
    assert clf.thresholds is not None and len(clf.thresholds) == len(ds.classes)
    test = [ds.texts[i] for i in pred["test_index"]]
    assert [list(p) for p in clf.predict(test)] == pred["y_pred"]  # the stored classifier is the one that was scored
    if method == "tfidf":
        assert m["micro_f1"] > m["baseline"]["micro_f1"]


def test_a_single_label_method_is_refused_before_anything_is_queued(cache, default_ds, tmp_path):
    from engine import api
    from engine.errors import DataError
    from engine.methods import registry

    rows = [{"text": t, "labels": list(lab)} for t, lab in zip(multi_label_ds(default_ds).texts, multi_label_ds(default_ds).labels)]
    path = tmp_path / "multi.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows))
    spec = api.parse_spec(
        {"data": {"path": str(path), "text_column": "text", "label_column": "labels"}, "models": ["smollm2"], "methods": ["zero-shot"]}
    )
    with pytest.raises(DataError, match=r"zero-shot predicts one label per letter.*Methods for multi-label data: tfidf, svc, logreg"):
        api.submit(spec, start_worker=False)
    assert api.list_runs() == []  # nothing queued
    assert {m["name"] for m in api.methods() if m["label_sets"]} == {k.name for k in registry.KINDS.values() if k.label_sets}
