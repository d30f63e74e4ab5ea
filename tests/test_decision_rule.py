"""One decision rule for every method: on a two-label task each method chooses its operating threshold the same way, on
its own training letters (out-of-fold probabilities, or the validation carve of those that train), and Compare refuses
to test two evaluations decided under different rules."""

from __future__ import annotations

import json

import pytest

from engine.evaluation import comparison, results
from tests.conftest import cli, run_step, write_csv
from tests.test_binary import _binary_ds


@pytest.fixture
def two_label_csv(tmp_path, default_ds):
    ds = _binary_ds(default_ds)
    return write_csv(tmp_path / "refer.csv", [{"text": t, "label": lab} for t, lab in zip(ds.texts[:120], ds.labels[:120])])


def test_every_method_reports_its_threshold_rule_and_fold_thresholds_under_cv(cache, tmp_path, two_label_csv, tiny_encoder):
    """svc, tfidf and linear-probe (which answered at the most probable label before) under cv: the same threshold_rule,
    each with one threshold per fold chosen on that fold's training letters, and the stored classifier's own."""
    common = ["--protocol", "cv", "--cv-folds", "3", "--cv-repeats", "1", "--n-boot", "100", "--max-length", "32", "--epochs", "2"]
    seen = {}
    for method, model in (("svc", tiny_encoder), ("tfidf", "tfidf"), ("linear-probe", tiny_encoder)):
        out = tmp_path / f"{method}.json"
        r = cli("evaluate", "--data", str(two_label_csv), "--model", str(model), "--method", method, *common, "--json", str(out))
        assert r.returncode == 0, r.stderr
        d = json.loads(out.read_text())
        assert d["task"] == "binary" and len(d["fold_thresholds"]) == 3, method
        assert all(0 < t < 1 for t in d["fold_thresholds"]) and isinstance(d["threshold"], float), method
        seen[method] = d["threshold_rule"]
    assert set(seen.values()) == {"best-f1"}, seen


def test_most_probable_answers_without_a_threshold(cache, default_ds, tiny_encoder):
    ds = _binary_ds(default_ds)
    res = run_step(ds, tiny_encoder, "logreg", protocol="holdout", max_length=32, grid=False, n_boot=100, threshold_rule="most-probable")
    m = res.metrics
    assert m["threshold_rule"] == "most-probable" and m["fold_thresholds"] is None and m["threshold"] == 0.5
    assert res.manifest["decision"]["rule"] == "most-probable" and "threshold" not in res.manifest["decision"]


def test_compare_refuses_to_test_evaluations_decided_by_different_rules(cache, default_ds, tiny_encoder):
    ds = _binary_ds(default_ds)
    opts = dict(protocol="holdout", max_length=32, grid=False, n_boot=100)
    run_step(ds, "tfidf", "tfidf", **opts)  # best-f1 (the default)
    run_step(ds, tiny_encoder, "logreg", threshold_rule="most-probable", **opts)
    run_step(ds, tiny_encoder, "svc", **opts)
    evals, _ = results.list_evaluations()
    rule = {e.label: comparison.decision_rule(e) for e in evals}
    assert sorted(rule.values()) == ["best-f1", "best-f1", "most-probable"]
    sig = comparison.significance(evals)
    assert len(sig) == 2
    for _, row in sig.iterrows():
        if rule[row["best"]] != rule[row["other"]]:
            assert row["verdict"] == "not compared" and "different rules" in row["summary"] and "most-probable" in row["summary"]
        else:
            assert row["verdict"] != "not compared" and row["p_holm"] == row["p_holm"]  # tested: a p-value
