"""Two-label evaluations on the dashboard (AppTest, no browser): Compare's sensitivity, specificity, PPV, NPV, ROC-AUC and
PR-AUC with their CIs, the positive label and the threshold with its rule, the ROC and precision-recall curves with each
operating point (exportable); an older evaluation without these figures does not break it; Classify's probability of the
positive label against each classifier's threshold, and the label that gives."""

from __future__ import annotations

import json
import shutil
from types import SimpleNamespace

import pytest
from streamlit.testing.v1 import AppTest

from tests.conftest import ROOT, cache_at, run_step, write_csv
from tests.test_binary import _binary_ds

FIGURES = ("Sensitivity", "Specificity", "PPV", "NPV", "ROC-AUC", "PR-AUC")


def page(name: str) -> AppTest:
    return AppTest.from_file(str(ROOT / "pages" / name), default_timeout=180)


@pytest.fixture(scope="module")
def bin_stored(tmp_path_factory, tiny_encoder, default_ds):
    """A cache of its own holding two holdout evaluations of a two-label dataset (one specialty as 'refer', the rest
    'no'): the tf-idf reference and logreg of the tiny encoder, both choosing a best-F1 threshold."""

    cache = tmp_path_factory.mktemp("bin-cache")
    with cache_at(cache):
        from engine import api

        two = _binary_ds(default_ds)
        rows = [{"text": t, "label": lab} for t, lab in zip(two.texts, two.labels)]
        ds = api.load_dataset(str(write_csv(cache.parent / "binary.csv", rows)), "text", "label")
        results = [
            run_step(ds, "tfidf", "tfidf", protocol="holdout", n_boot=100),
            run_step(ds, tiny_encoder, "logreg", protocol="holdout", max_length=64, grid=False, n_boot=100),
        ]
        assert all(r.metrics["task"] == "binary" for r in results)
        yield cache, ds, results


@pytest.fixture
def bin_cache(bin_stored, monkeypatch):
    monkeypatch.setenv("CLINBENCH_CACHE", str(bin_stored[0]))
    return bin_stored


def _charts(at) -> list[dict]:
    return [json.loads(c.proto.spec) for c in at.get("plotly_chart")]


def _chart(at, start: str) -> dict:
    return next(f for f in _charts(at) if f["layout"].get("title", {}).get("text", "").startswith(start))


def _ok(at) -> None:
    assert not at.exception, at.exception
    assert not at.error, [e.value for e in at.error]


def _figures(at):
    return next(d.value for d in at.dataframe if "Sensitivity" in d.value.columns)


def test_compare_page_shows_the_clinical_figures_with_cis_threshold_and_rule(bin_cache):
    _, _, results = bin_cache
    at = page("5_Compare.py").run()
    _ok(at)
    table = _figures(at)
    assert len(table) == 2 and set(table["Positive label"]) == {"refer"}
    for name in FIGURES:
        assert table[name].between(0, 1).all(), name
        for value, ci in zip(table[name], table[f"{name} 95% CI"]):
            lo, hi = map(float, ci.split("–"))
            assert lo <= value + 1e-3 and value - 1e-3 <= hi, (name, value, ci)
    assert list(table["ROC-AUC"]) == sorted(table["ROC-AUC"], reverse=True)  # best first
    by_key = {r.metrics["roc_auc"]: r.metrics for r in results}
    for _, row in table.iterrows():
        m = next(m for auc, m in by_key.items() if round(auc, 3) == row["ROC-AUC"])
        assert row["Sensitivity"] == round(m["sensitivity"], 3) and row["NPV"] == round(m["npv"], 3)
        assert row["Threshold"] == f"{m['threshold']:.3f}" and row["Threshold rule"] == "best-f1"
    assert "Two labels: sensitivity, specificity, PPV, NPV, ROC-AUC, PR-AUC" in [s.value for s in at.subheader]
    assert any("Positive label: **refer**" in m.value for m in at.markdown)
    assert "dl-binary-csv" in [b.key for b in at.get("download_button")]
    assert "Confusion matrices" in [s.value for s in at.subheader]  # the single-label views stay


def test_compare_page_draws_roc_and_pr_curves_with_the_operating_points(bin_cache):
    _, _, results = bin_cache
    at = page("5_Compare.py").run()
    _ok(at)
    roc = _chart(at, "ROC curves")
    lines = [t for t in roc["data"] if t.get("mode") == "lines" and t["name"] != "chance"]
    points = [t for t in roc["data"] if t.get("mode") == "markers"]
    assert len(lines) == 2 and len(points) == 2 and all("AUC" in t["name"] for t in lines)
    operating = sorted((round(p["x"][0], 6), round(p["y"][0], 6)) for p in points)
    expected = sorted((round(1 - r.metrics["specificity"], 6), round(r.metrics["sensitivity"], 6)) for r in results)
    assert operating == expected
    for t in lines:  # from (0, 0) to (1, 1)
        assert t["x"][0] == 0 and t["x"][-1] == 1 and t["y"][-1] == 1
    pr = _chart(at, "Precision-recall curves")
    assert len([t for t in pr["data"] if t.get("mode") == "lines"]) == 2
    pr_points = sorted((round(p["x"][0], 6), round(p["y"][0], 6)) for p in pr["data"] if p.get("mode") == "markers")
    assert pr_points == sorted((round(r.metrics["sensitivity"], 6), round(r.metrics["ppv"], 6)) for r in results)
    assert pr["layout"]["shapes"] and 0 < pr["layout"]["shapes"][0]["y0"] < 0.5  # the share of 'refer' letters
    keys = {b.key for b in at.get("download_button")}
    assert {f"dl-{k}-{f}" for k in ("roc", "pr") for f in ("png", "svg", "html")} <= keys  # exportable like the others


def test_compare_page_names_an_older_two_label_evaluation_without_the_figures(bin_cache, tmp_path, monkeypatch):
    """An evaluation of the same two labels made before task "binary" was recorded: no clinical figures, no curves."""
    cache = bin_cache[0]
    old_cache = tmp_path / "cache"
    shutil.copytree(cache / "evaluations", old_cache / "evaluations")
    folder = old_cache / "evaluations" / next(iter(p.name for p in (old_cache / "evaluations").iterdir() if p.is_dir()))
    manifest = json.loads((folder / "manifest.json").read_text())
    for k in ("task", "positive_label", "sensitivity", "sensitivity_ci", "curves", "threshold", "threshold_rule", "fold_thresholds"):
        manifest["metrics"].pop(k, None)
    (folder / "manifest.json").write_text(json.dumps(manifest))
    (folder / "manifest.sha256").unlink(missing_ok=True)  # as written before manifests were sealed
    monkeypatch.setenv("CLINBENCH_CACHE", str(old_cache))
    at = page("5_Compare.py").run()
    _ok(at)
    table = _figures(at)
    assert len(table) == 1 and table["Sensitivity"].notna().all()
    assert any("Made before two-label figures were recorded" in c.value for c in at.caption)
    roc = _chart(at, "ROC curves")
    assert len([t for t in roc["data"] if t.get("mode") == "markers"]) == 1


def test_figures_table_and_curves_tolerate_missing_keys():
    from ui import binary

    def ev(label, metrics):
        return SimpleNamespace(label=label, metrics=metrics, protocol="cv", key=label)

    evals = [
        ev("old", {"macro_f1": 0.5}),  # no task
        ev("partial", {"task": "binary", "macro_f1": 0.5, "sensitivity": 0.8, "roc_auc": None, "pr_auc_ci": None}),
        ev("full", {"task": "binary", "positive_label": "yes", "roc_auc": 0.9, "roc_auc_ci": [0.8, 0.95], "threshold": 0.3,
                    "fold_thresholds": [0.2, 0.4], "threshold_rule": "sensitivity", "threshold_target": 0.9, "n_scored": 40,
                    "curves": {"roc": {"fpr": [0, 1], "tpr": [0, 1]}, "pr": {"recall": [1, 0], "precision": [0.5, 1]}}}),
    ]  # fmt: skip
    assert binary.is_binary(evals) and not binary.is_binary(evals[:1])
    t = binary.figures_table(evals)
    assert list(t["Evaluation"]) == ["full", "partial"]  # older left out; missing ROC-AUC last
    full = t.iloc[0]
    assert full["ROC-AUC 95% CI"] == "0.800–0.950" and full["Threshold"] == "0.300 (folds 0.200–0.400)"
    assert full["Threshold rule"] == "sensitivity ≥ 0.9" and full["Scored on"] == "cv · 40 letters"
    assert t.iloc[1]["Threshold"] == "" and t.iloc[1]["PR-AUC 95% CI"] == "" and t.iloc[1]["Sensitivity"] == 0.8
    curves = binary.curve_rows(evals)
    assert [c["evaluation"] for c in curves] == ["full"] and curves[0]["sensitivity"] is None
    from ui import charts

    roc = charts.roc_chart(curves)  # no operating point when sensitivity/specificity are missing
    assert [t.mode for t in roc.data] == ["lines", "lines"]


def test_classify_page_shows_the_probability_of_the_positive_label_against_the_threshold(bin_cache):
    _, ds, results = bin_cache
    at = page("6_Classify.py").run()
    _ok(at)
    at.button[0].click().run()  # a test letter
    assert at.text_area[0].value in ds.texts and any("true label:" in c.value for c in at.caption)
    at.button[1].click().run()
    _ok(at)
    table = next(d.value for d in at.dataframe if "P(positive)" in d.value.columns)
    assert len(table) == 2 and set(table["Positive label"]) == {"refer"} and set(table["Threshold rule"]) == {"best-f1"}
    thresholds = sorted(round(r.metrics["threshold"], 4) for r in results)
    assert sorted(table["Threshold"]) == thresholds
    given = (table["P(positive)"] >= table["Threshold"]).map({True: "refer", False: "no"})
    assert list(table["Label given"]) == list(given)
    answers = next(d.value for d in at.dataframe if "Label" in d.value.columns and "Latency (ms)" in d.value.columns)
    assert dict(zip(answers["Classifier"], answers["Label"])) == dict(zip(table["Classifier"], table["Label given"]))
    fig = _chart(at, "Probability of the positive label against each classifier's threshold")
    bars, ticks = fig["data"]
    assert sorted(round(x, 4) for x in ticks["x"]) == thresholds and len(bars["x"]) == 2
    assert all(("→ refer" in t) == (p >= c) for t, p, c in zip(bars["text"], bars["x"], ticks["x"]))


def test_classify_rows_apply_the_operating_threshold(bin_cache):
    """A two-label classifier answers the label its threshold gives, which may differ from the more probable one."""
    from engine import api
    from engine.methods import classifiers

    _, ds, _ = bin_cache
    evals, _ = api.evaluations()
    texts = ds.texts[:30]
    overruled = 0
    for ev in evals:
        clf = classifiers.load(ev.folder)
        assert clf.threshold is not None and clf.positive_label == "refer"
        for text, label in zip(texts, clf.predict(texts)):
            (row,) = api.classify(text, [ev])
            assert row["task"] == "binary" and row["predicted"] == label and row["threshold"] == pytest.approx(clf.threshold)
            assert (row["p_positive"] >= row["threshold"]) == (label == "refer")
            assert row["score"] == pytest.approx(row["scores"][label])
            overruled += label != max(row["scores"], key=row["scores"].get)
    assert overruled  # at a threshold other than 0.5 some letters get the less probable label


def test_the_report_bundles_the_two_label_figures_and_curves(bin_cache):
    from engine import api
    from ui import report

    evals, _ = api.evaluations()
    figs, tables = report.figures(evals), report.tables(evals)
    assert {"ROC curves", "precision-recall curves"} <= set(figs)
    table = tables["sensitivity specificity by model and method"]
    assert set(FIGURES) <= set(table.columns) and len(table) == 2
    roc = figs["ROC curves"].to_dict()
    assert len([t for t in roc["data"] if t.get("mode") == "markers"]) == 2  # each evaluation's operating point


def test_external_scoring_answers_at_the_operating_threshold(bin_cache, tmp_path):
    """A two-label classifier scored on another file answers as on Classify: at its threshold, not the likelier label."""
    from sklearn.metrics import accuracy_score

    from engine import api
    from engine.methods import classifiers

    _, ds, results = bin_cache
    logreg = next(r for r in results if r.method == "logreg")
    clf = classifiers.load(logreg.artifact)
    assert clf.threshold is not None and abs(clf.threshold - 0.5) > 1e-3
    texts, labels = ds.texts[:80], [str(lab) for lab in ds.labels[:80]]
    path = write_csv(tmp_path / "other.csv", [{"text": t, "label": lab} for t, lab in zip(texts, labels, strict=True)])
    res = api.score_external(logreg.artifact, path, "text", "label", allow_overlap=True)  # letters it was trained on, too
    at_threshold = clf.predict(texts)
    assert res["accuracy"] == pytest.approx(accuracy_score(labels, at_threshold))
    proba = clf.predict_proba(texts)
    likelier = [clf.classes_[i] for i in proba.argmax(1)]
    j = clf.classes_.index(clf.positive_label)
    assert at_threshold == [clf.classes_[j] if p[j] >= clf.threshold else clf.classes_[1 - j] for p in proba]
    assert at_threshold != likelier or not any(min(clf.threshold, 0.5) <= p[j] < max(clf.threshold, 0.5) for p in proba)
