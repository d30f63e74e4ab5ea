"""One decision rule for every method: on a two-label task each method chooses its operating threshold the same way, on
its own training letters (out-of-fold probabilities, or the validation carve of those that train), and Compare refuses
to test two evaluations decided under different rules."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from engine.evaluation import comparison, results
from tests.conftest import cli, run_step, write_csv
from tests.test_binary import _binary_ds

# svc without its C/kernel search: the rule and the fold thresholds are the same code either way, the search a third of its time
NO_GRID = {"svc": ["--no-grid"]}


def _evaluate(data, model, method: str, common: list[str], out: Path):
    """`python -m engine evaluate` of one model and method with the shared options, its JSON written to `out`; the
    finished process."""
    r = cli(
        "evaluate", "--data", str(data), "--model", str(model), "--method", method, *common, *NO_GRID.get(method, []), "--json", str(out)
    )
    assert r.returncode == 0, r.stderr
    return r


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
        _evaluate(two_label_csv, model, method, common, out)
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


def test_zero_shot_decides_by_the_rule_svc_decides_by(cache, tmp_path, two_label_csv, tiny_encoder, tiny_decoder):
    """The prompting methods run on the same harness: on a two-label task under cv zero-shot reports svc's threshold rule,
    one threshold per fold (chosen on that fold's training letters), and each fold's answers are its threshold's."""
    common = ["--protocol", "cv", "--cv-folds", "3", "--cv-repeats", "1", "--n-boot", "100", "--max-length", "32"]
    got, artifact = {}, None
    for method, model in (("svc", tiny_encoder), ("zero-shot", tiny_decoder)):
        out = tmp_path / f"{method}.json"
        r = _evaluate(two_label_csv, model, method, common, out)
        got[method] = json.loads(out.read_text())
        artifact = next(line.split(": ", 1)[1] for line in r.stdout.splitlines() if line.startswith("artifact: "))
    z, s = got["zero-shot"], got["svc"]
    for k in ("task", "positive_label", "threshold_rule", "threshold_target"):
        assert z[k] == s[k], k
    assert z["threshold_rule"] == "best-f1" and len(z["fold_thresholds"]) == 3 and isinstance(z["threshold"], float)
    pred = json.loads((Path(artifact) / "predictions.json").read_text())
    j = pred["classes"].index(z["positive_label"])
    for fold, scores, answer in zip(pred["fold"], pred["scores"], pred["y_pred"], strict=True):
        t = z["fold_thresholds"][fold]
        if abs(scores[j] - t) > 1e-5:  # (scores are stored to 6 decimals)
            assert (answer == z["positive_label"]) == (scores[j] >= t)
    manifest = json.loads((Path(artifact) / "manifest.json").read_text())
    assert manifest["method"] == "zero-shot" and manifest["decision"]["threshold"] == z["threshold"]
    assert [manifest["decision"]["folds"][f"r0f{i}"]["threshold"] for i in range(3)] == z["fold_thresholds"]
