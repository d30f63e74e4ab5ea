"""Subgroups (a column of the letters scored apart): the per-value macro-F1 with CIs as scikit-learn scores it, the
best-worst gap with its CI, the warning for small subgroups, a column that never reaches the classifier, and the
figures an evaluation and `evaluate --json` carry."""

from __future__ import annotations

import json

import numpy as np
import pytest
from sklearn.metrics import f1_score

from engine.errors import DataError
from engine.evaluation import subgroups
from engine.runs import experiment
from tests.conftest import evaluate_cli, run_step, write_csv


def _records(seed: int = 0, n: int = 400):
    rng = np.random.default_rng(seed)
    y, site = rng.integers(0, 3, n), rng.choice(["north", "south"], n)
    right = np.where(site == "north", rng.random(n) < 0.9, rng.random(n) < 0.5)
    pred = np.where(right, y, rng.integers(0, 3, n))
    return y, pred, site


def test_subgroup_figures_score_each_value_as_sklearn_and_the_gap_between_best_and_worst():
    y, pred, site = _records()
    out = subgroups.subgroup_figures(np.eye(3)[y], np.eye(3)[pred], site, np.arange(400), np.arange(400), column="site", n_boot=500, seed=0)
    rows = {r["name"]: r for r in out["subgroups"]}
    for name in ("north", "south"):
        inside = site == name
        assert rows[name]["n"] == inside.sum()
        assert rows[name]["macro_f1"] == pytest.approx(f1_score(y[inside], pred[inside], average="macro"))
        lo, hi = rows[name]["macro_f1_ci"]
        assert lo < rows[name]["macro_f1"] < hi and not rows[name]["too_few"]
    assert out["subgroup_gap"] == pytest.approx(rows["north"]["macro_f1"] - rows["south"]["macro_f1"])
    assert out["subgroup_gap_between"] == ["north", "south"]
    lo, hi = out["subgroup_gap_ci"]
    assert 0 < lo < out["subgroup_gap"] < hi  # a real gap of about 0.3: its interval excludes 0
    assert out["subgroup_warnings"] == []


def test_a_small_subgroup_is_warned_about_and_an_absent_class_is_left_out_not_zero():
    y, pred, site = _records(1, 200)
    site = site.astype(object)
    site[:12] = "clinic"  # 12 letters
    y[:12] = np.where(y[:12] == 2, 0, y[:12])  # class 2 has no letter in the clinic
    pred[:12] = y[:12]
    out = subgroups.subgroup_figures(np.eye(3)[y], np.eye(3)[pred], site, np.arange(200), np.arange(200), column="site", n_boot=200, seed=0)
    clinic = next(r for r in out["subgroups"] if r["name"] == "clinic")
    assert clinic["n"] == 12 and clinic["too_few"] and clinic["macro_f1"] == 1.0 and clinic["macro_f1_ci"] == [1.0, 1.0]
    assert len(out["subgroup_warnings"]) == 1 and "'clinic' (12)" in out["subgroup_warnings"][0]
    assert f"fewer than {subgroups.SMALL_SUBGROUP} letters" in out["subgroup_warnings"][0]


def test_records_of_one_letter_or_one_duplicate_group_move_together():
    """Two repeats of the same 100 letters: n counts letters, and the CI equals the one of a single repeat resampled by
    letter (every record of a letter drawn together)."""
    y, pred, site = _records(2, 100)
    twice = subgroups.subgroup_figures(
        np.eye(3)[np.r_[y, y]],
        np.eye(3)[np.r_[pred, pred]],
        np.r_[site, site],
        np.r_[np.arange(100), np.arange(100)],
        np.r_[np.arange(100), np.arange(100)],
        column="site",
        n_boot=300,
        seed=0,
    )
    once = subgroups.subgroup_figures(
        np.eye(3)[y], np.eye(3)[pred], site, np.arange(100), np.arange(100), column="site", n_boot=300, seed=0
    )
    for a, b in zip(twice["subgroups"], once["subgroups"], strict=True):
        assert a["n"] == b["n"] and a["macro_f1"] == pytest.approx(b["macro_f1"])
        assert a["macro_f1_ci"] == pytest.approx(b["macro_f1_ci"])


def _letters_with_sites(default_ds, tmp_path):
    from collections import Counter

    seen, rows = Counter(), []
    for t, lab in zip(default_ds.texts, default_ds.labels):
        seen[lab] += 1
        if seen[lab] <= 12:
            rows.append({"letter": t, "specialty": lab, "site": "north" if seen[lab] % 3 else "south"})
    return write_csv(tmp_path / "sites.csv", rows)


def test_an_evaluation_carries_the_subgroup_figures_and_the_column_never_reaches_the_classifier(cache, tmp_path, default_ds, tiny_encoder):
    path = _letters_with_sites(default_ds, tmp_path)
    ds = experiment.DataSpec(str(path), "letter", "specialty", subgroup_column="site").load()
    assert ds.subgroups.count("south") == 20 and ds.letter_fields is None  # prompts never see it
    plain = experiment.DataSpec(str(path), "letter", "specialty").load()
    assert ds.texts == plain.texts and ds.data_hash == plain.data_hash
    res = run_step(ds, tiny_encoder, "logreg", max_length=64, grid=False, n_boot=100)
    m = res.metrics
    assert [r["name"] for r in m["subgroups"]] == ["north", "south"] and [r["n"] for r in m["subgroups"]] == [40, 20]
    assert m["subgroup_column"] == "site" and all(len(r["macro_f1_ci"]) == 2 for r in m["subgroups"])
    assert m["subgroup_gap"] == pytest.approx(max(r["macro_f1"] for r in m["subgroups"]) - min(r["macro_f1"] for r in m["subgroups"]))
    assert len(m["subgroup_warnings"]) == 1 and "'south' (20)" in m["subgroup_warnings"][0]
    again = run_step(plain, tiny_encoder, "logreg", max_length=64, grid=False, n_boot=100)
    assert again.artifact != res.artifact and "subgroups" not in again.metrics  # its own cache key: never a stale hit
    assert again.metrics["macro_f1"] == pytest.approx(m["macro_f1"])  # the classifier read the same letters


def test_a_missing_or_label_subgroup_column_is_refused(tmp_path, default_ds):
    path = _letters_with_sites(default_ds, tmp_path)
    with pytest.raises(DataError, match=r"subgroup column 'sites' is not in .*Did you mean 'site'"):
        experiment.DataSpec(str(path), "letter", "specialty", subgroup_column="sites").load()
    with pytest.raises(DataError, match="also the letter, the label"):
        experiment.DataSpec(str(path), "letter", "specialty", subgroup_column="specialty").load()


def test_evaluate_json_carries_subgroups(cache, tmp_path, default_ds, tiny_encoder):
    path = _letters_with_sites(default_ds, tmp_path)
    out = tmp_path / "eval.json"
    done = evaluate_cli(
        path,
        tiny_encoder,
        "--method",
        "logreg",
        "--max-length",
        "64",
        "--no-grid",
        "--n-boot",
        "100",
        "--subgroup-column",
        "site",
        "--json",
        str(out),
    )
    assert done.returncode == 0, done.stderr
    res = json.loads(out.read_text())
    assert [r["name"] for r in res["subgroups"]] == ["north", "south"] and res["subgroup_gap_ci"] is not None
    assert "subgroup" in done.stdout


def _review_page():
    from engine import api
    from ui import review

    evals = api.evaluations()[0]
    review.subgroup_section(evals)
    review.methods_download(evals)


def test_compare_shows_the_subgroup_chart_and_methods_md_reports_the_subgroups(cache, tmp_path, default_ds, tiny_encoder):
    from streamlit.testing.v1 import AppTest

    from engine import api
    from ui import charts, report

    ds = experiment.DataSpec(str(_letters_with_sites(default_ds, tmp_path)), "letter", "specialty", subgroup_column="site").load()
    run_step(ds, tiny_encoder, "logreg", max_length=64, grid=False, n_boot=100)
    evals = api.evaluations()[0]
    table = api.subgroup_table(evals)
    assert list(table["subgroup"]) == ["north", "south"] and list(table["n"]) == [40, 20] and table["too_few"].tolist() == [False, True]
    fig = charts.subgroup_chart(table)
    assert [list(t.y) for t in fig.data] == [["north (n=40)", "south (n=20, too few)"]] and fig.data[0].error_x.array is not None
    assert "macro-F1 by site" in report.figures(evals) and "macro-F1 by site" in report.tables(evals)
    at = AppTest.from_function(_review_page, default_timeout=120).run()
    assert not at.exception, at.exception
    assert [s.value for s in at.subheader] == ["By site"] and len(at.get("plotly_chart")) == 1
    assert any("fewer than 30 letters" in c.value for c in at.caption)
    text = api.methods_markdown(evals)
    m = evals[0].metrics
    assert "### Subgroups" in text and f"north {m['subgroups'][0]['macro_f1']:.3f}" in text and "14 / 23b" in text
    assert "14 fairness" not in text


def test_label_sets_get_subgroup_figures_over_the_labels_each_subgroup_carries(cache, default_ds):
    from pathlib import Path

    from engine.data.labels import indicator
    from tests.test_multilabel import multi_label_ds

    ds = multi_label_ds(default_ds)
    half = ["early" if i % 2 else "late" for i in range(len(ds))]
    ds.options, ds.fields = {"subgroup_column": "half"}, {"half": half}
    res = run_step(ds, "tfidf", "tfidf", protocol="holdout", test_size=0.3, n_boot=100)
    m = res.metrics
    pred = json.loads((Path(res.artifact) / "predictions.json").read_text())
    T, P = indicator(pred["y_true"], ds.classes), indicator(pred["y_pred"], ds.classes)
    rows = {r["name"]: r for r in m["subgroups"]}
    for name in ("early", "late"):
        inside = np.array([half[i] == name for i in pred["test_index"]])
        present = T[inside].sum(0) > 0
        want = f1_score(T[inside][:, present], P[inside][:, present], average="macro", zero_division=0)
        assert rows[name]["n"] == inside.sum() and rows[name]["macro_f1"] == pytest.approx(want)
