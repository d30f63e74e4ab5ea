"""Stored evaluations as the pages read them: listing, filters, tables, significance (holdout and cv, common folds,
verdicts), the letters behind the figures, damaged folders skipped."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from engine.errors import ClinBenchError
from engine.evaluation import comparison, paired, results
from engine.runs import experiment


def test_results_list_filter_tables_and_skip_damaged(cache, two_evals):
    ds, steps = two_evals
    (cache / "evaluations" / "broken").mkdir()
    (cache / "evaluations" / "broken" / "manifest.json").write_text("{not json")
    evals, skipped = results.list_evaluations()
    assert {e.method for e in evals} == {"svc", "logreg"}
    assert [s.folder for s in skipped] == ["broken"] and "not valid JSON" in skipped[0].reason
    assert results.list_evaluations(data_hash="0" * 64)[0] == []
    table = results.comparison_table(evals)
    assert list(table["macro_f1"]) == sorted(table["macro_f1"], reverse=True)
    assert set(table["macro_f1"]) == {s.metrics["macro_f1"] for s in steps}
    per_class = results.per_class_table(evals)
    assert set(per_class["class"]) == set(ds.classes) and len(per_class) == 2 * len(ds.classes)
    assert {"protocol", "n_letters", "fold_sd"} <= set(table.columns) and (table["n_letters"] == len(ds)).all()
    sig = comparison.significance(evals, n_boot=200)
    assert len(sig) == 1 and sig["best"][0] == table["evaluation"][0]
    assert sig["difference"][0] == pytest.approx(table["macro_f1"][0] - table["macro_f1"][1])
    assert sig["protocol"][0] == table["protocol"][0] and sig["n_letters"][0] == len(ds) and sig["verdict"][0]
    assert results.letters(evals[0]).data_hash == ds.data_hash
    wrong = results.misclassified(evals[0])
    assert (wrong["truth"] != wrong["prediction"]).all() and set(wrong["truth"]) <= set(ds.classes)
    assert all(" ".join(ds.texts[r].split()).startswith(t.rstrip("…")) for r, t in zip(wrong["row"], wrong["letter"]))
    differ = results.disagreements(evals)
    assert list(differ.columns) == ["row", "truth", *[e.label for e in evals], "letter"]


def test_results_filter_by_run(cache, small_csv, tiny_encoder):
    from engine import api
    from engine.runs import jobs

    spec = experiment.parse_spec(
        {
            "name": "r",
            "data": {"path": str(small_csv), "text_column": "letter", "label_column": "specialty"},
            "models": [str(tiny_encoder)],
            "methods": ["svc"],
            "options": {"max_length": 64, "grid": False, "n_boot": 100},
        }
    )
    run_id = jobs.submit(spec, start_worker=False)
    assert api.evaluations(run_id=run_id)[0] == []  # nothing finished yet


def _eval(key: str, macro_f1: float, protocol: str | None = "cv", data_hash: str = "d" * 64) -> results.Evaluation:
    manifest = {
        "model": {"name": key},
        "method": "logreg",
        "data": {"source": "/nonexistent/letters.csv", "data_hash": data_hash, "n_letters": 60, "classes": ["a", "b", "c"]},
        "metrics": {"macro_f1": macro_f1, "macro_f1_ci": [macro_f1 - 0.1, macro_f1 + 0.1]},
    }
    if protocol:
        manifest["protocol"] = {"name": protocol, "hash": "p"}
        manifest["metrics"]["fold_macro_f1_sd"] = 0.03
    else:
        manifest["split"] = {"hash": "s"}  # an artifact made before protocols were recorded
    return results.Evaluation(key, Path("/nonexistent") / key, manifest, label=key)


def _cv_record(y, preds: list) -> dict:
    """predictions.json of a 5-fold cv with len(preds) repeats; repeat r's folds come from seed r (shared by every evaluation)."""
    rec = {"protocol": "cv", "classes": ["a", "b", "c"], "test_index": [], "repeat": [], "fold": [], "y_true": [], "y_pred": []}
    for r, pred in enumerate(preds):
        for f, chunk in enumerate(np.array_split(np.random.default_rng(r).permutation(len(y)), 5)):
            for i in chunk:
                for k, v in (("test_index", int(i)), ("repeat", r), ("fold", f), ("y_true", str(y[i])), ("y_pred", str(pred[i]))):
                    rec[k].append(v)
    return rec


@pytest.fixture
def stored_predictions(monkeypatch):
    """Evaluations without folders: results.predictions reads these records instead."""
    records: dict[str, dict] = {}
    for module in (results, comparison):
        monkeypatch.setattr(module, "predictions", lambda ev: records[ev.key])
    return records


def _noisy(rng, y, right: float):
    return np.where(rng.random(len(y)) < right, y, rng.choice(list("abc"), len(y)))


def test_significance_compares_cv_evaluations_on_their_common_folds(stored_predictions):
    rng = np.random.default_rng(0)
    y = rng.choice(list("abc"), 60)
    good, poor, twin = _noisy(rng, y, 0.95), _noisy(rng, y, 0.3), _noisy(rng, y, 0.95)
    stored_predictions.update(
        best=_cv_record(y, [good, good]),  # 5x2
        poor=_cv_record(y, [poor]),  # 5x1: compared on repeat 0
        same=_cv_record(y, [good, good]),
        elsewhere=_cv_record(y, [twin]),
    )
    evals = [_eval("best", 0.95), _eval("poor", 0.3), _eval("same", 0.94), _eval("elsewhere", 0.9, data_hash="e" * 64)]
    sig = comparison.significance(evals, n_boot=300)
    # three evaluations: every pair, one family; another dataset is never compared
    assert sorted(zip(sig["best"], sig["other"])) == [("best", "poor"), ("best", "same"), ("same", "poor")]
    assert (sig["n_folds"] == 5).all() and (sig["n_letters"] == 60).all()  # all ranked and tested on repeat 0, which all share
    assert (sig["protocol"] == "cv").all() and sig["p_mcnemar"].isna().all()
    sig = sig.set_index(["best", "other"])
    poor = sig.loc[("best", "poor")]
    assert poor["verdict"] == f"best better by {comparison.fmt_diff(poor['difference'])}"
    assert poor["difference"] > 0.3 and poor["significant"]
    assert sig.loc[("best", "same"), "verdict"] == "identical predictions" and sig.loc[("best", "same"), "identical"]
    tested = sig[~sig["identical"]]  # identical predictions need no test and do not count in the family
    assert tested["p_holm"].tolist() == pytest.approx(paired.holm(tested["p_corrected"].tolist()))
    assert all("+0.000" not in s and "p =" in s for s in sig["summary"])
    assert all("Holm-adjusted over all 2 pairwise tests of 3 evaluations" in s for s in tested["summary"])


def test_significance_reads_the_training_size_of_a_cut_training_side(stored_predictions):
    """Evaluations with labels_per_class 2 (3 labels: 6 training letters a fold): the corrected t-test's n_train is 6,
    as the plans' folds record it, not the 48 letters outside the test fold."""
    rng = np.random.default_rng(3)
    y = rng.choice(list("abc"), 60)
    good, poor = _noisy(rng, y, 0.8), _noisy(rng, y, 0.6)
    stored_predictions.update(best=_cv_record(y, [good, good]), poor=_cv_record(y, [poor, poor]))
    evals = [_eval("best", 0.8), _eval("poor", 0.6)]
    for e in evals:
        e.manifest["protocol"] |= {
            "labels_per_class": 2,
            "folds": [{"repeat": r, "fold": f, "n_train": 6, "n_test": 12} for r in range(2) for f in range(5)],
        }
    row = comparison.significance(evals, n_boot=100).iloc[0]
    diffs = paired.paired_comparison(stored_predictions["best"], stored_predictions["poor"], list("abc"), n_boot=10)["fold_diffs"]
    assert row["p_corrected"] == pytest.approx(paired.corrected_ttest(diffs, 6, 12)["p"])
    assert row["p_corrected"] != pytest.approx(paired.corrected_ttest(diffs, 48, 12)["p"])


def test_significance_says_no_detectable_difference_and_never_plus_zero(stored_predictions):
    rng = np.random.default_rng(1)
    y = rng.choice(list("abc"), 200)
    a = _noisy(rng, y, 0.7)
    b = a.copy()
    b[0] = y[0] if a[0] != y[0] else next(c for c in "abc" if c != y[0])  # one letter differs
    stored_predictions.update(
        a={"test_index": list(range(200)), "y_true": list(y), "y_pred": list(a), "classes": ["a", "b", "c"]},  # older artifacts
        b={"test_index": list(range(200)), "y_true": list(y), "y_pred": list(b), "classes": ["a", "b", "c"]},
    )
    sig = comparison.significance([_eval("a", 0.7, None), _eval("b", 0.69, None)], n_boot=300)
    row = sig.iloc[0]
    assert row["protocol"] == "holdout" and row["n_folds"] == 1 and row["p_mcnemar"] is not None and row["p_corrected"] is None
    assert row["diff_ci_low"] <= 0 <= row["diff_ci_high"] and row["verdict"] == "no detectable difference"
    assert not row["significant"] and row["p_holm"] == row["p_bootstrap"]
    assert "+0.000" not in row["summary"] and "-0.000" not in row["summary"] and row["summary"].startswith("no detectable difference")
    assert [comparison.fmt_diff(x) for x in (0.0, 0.0004, -0.00002, 0.0123)] == ["0", "+0.0004", "-2e-05", "+0.012"]


def test_the_best_is_ranked_on_the_letters_and_repeats_it_is_tested_on(stored_predictions):
    rng = np.random.default_rng(5)
    y = rng.choice(list("abc"), 90)
    mediocre, perfect, decent = _noisy(rng, y, 0.4), y.copy(), _noisy(rng, y, 0.8)
    stored_predictions.update(pooled=_cv_record(y, [mediocre, perfect]), steady=_cv_record(y, [decent]))
    # "pooled" leads on its 5x2 headline, but on repeat 0 -- the letters the test shares -- "steady" is better
    sig = comparison.significance([_eval("pooled", 0.75), _eval("steady", 0.7)], n_boot=300)
    row = sig.iloc[0]
    assert row["best"] == "steady" and row["best_score"] > row["other_score"] and row["difference"] > 0


def test_each_verdict_agrees_with_the_interval_of_its_own_test(stored_predictions):
    rng = np.random.default_rng(7)
    y = rng.choice(list("abc"), 300)
    base = _noisy(rng, y, 0.9)
    names = ["e0", "e1", "e2", "e3", "e4", "e5"]
    for name, n_flip in zip(names, (0, 3, 6, 40, 60, 80), strict=True):  # six evaluations: each against the best, Holm over five
        pred = base.copy()
        flip = rng.choice(300, n_flip, replace=False)
        pred[flip] = rng.choice(list("abc"), len(flip))
        stored_predictions[name] = _cv_record(y, [pred, pred])
    evals = [_eval(n, 0.8 - 0.01 * k) for k, n in enumerate(names)]
    sig = comparison.significance(evals, n_boot=300)
    assert len(sig) == 5 and sig["best"].nunique() == 1 and (sig["family"] == "5 tests of every evaluation against the best").all()
    for _, row in sig.iterrows():
        assert row["test"] == "corrected resampled t-test over the folds"
        excludes_zero = not (row["diff_ci_low"] <= 0 <= row["diff_ci_high"])
        assert excludes_zero == row["significant"] == (row["p_holm"] < 0.05), row["summary"]
        assert f"{row['ci_level']:.4g}% CI" in row["summary"] and "Holm-adjusted over 5 tests" in row["summary"]
        assert row["ci_level"] >= 95
    assert sig["significant"].any() and not sig["significant"].all()


def test_significance_skips_evaluations_without_a_shared_fold(stored_predictions):
    y = np.array(list("abc" * 10))
    stored_predictions.update(
        a={"test_index": list(range(30)), "y_true": list(y), "y_pred": list(y), "classes": ["a", "b", "c"]},
        b={"test_index": list(range(30, 60)), "y_true": list(y), "y_pred": list(y), "classes": ["a", "b", "c"]},
    )
    assert comparison.significance([_eval("a", 0.9, None), _eval("b", 0.8, None)], n_boot=50).empty


def test_comparison_table_shows_protocol_letters_and_fold_sd_old_artifacts_too():
    table = results.comparison_table([_eval("new", 0.8), _eval("old", 0.7, None)]).set_index("model")
    assert table.loc["new", ["protocol", "n_letters", "fold_sd"]].tolist() == ["cv", 60, 0.03]
    assert table.loc["old", "protocol"] == "holdout" and table.loc["old", "n_letters"] == 60 and pd.isna(table.loc["old", "fold_sd"])


def test_misclassified_and_disagreements_use_repeat_zero(stored_predictions):
    y = np.array(list("abcabcabcabc"))
    a0, a1, b0 = y.copy(), y.copy(), y.copy()
    a0[[1, 4]] = "c"  # wrong on rows 1 and 4 in repeat 0
    a1[[0, 2, 3]] = "b"  # other mistakes, in repeat 1, are not shown
    b0[[4, 7]] = "a"
    stored_predictions.update(a=_cv_record(y, [a0, a1]), b=_cv_record(y, [b0]))
    stored_predictions["a"]["scores"] = [[0.2, 0.3, 0.5]] * len(stored_predictions["a"]["test_index"])
    texts = [f"letter number {i}   with  spaces " + "x" * 300 for i in range(12)]
    ev_a, ev_b = _eval("a", 0.8), _eval("b", 0.8)
    wrong = results.misclassified(ev_a, texts=texts)
    assert wrong[["row", "truth", "prediction"]].values.tolist() == [[1, "b", "c"], [4, "b", "c"]]
    assert wrong["score"].tolist() == [0.5, 0.5] and wrong["letter"][0].startswith("letter number 1 with spaces x")
    assert wrong["letter"][0].endswith("…") and len(wrong["letter"][0]) == 161
    differ = results.disagreements([ev_a, ev_b], texts=texts)
    assert list(differ.columns) == ["row", "truth", "a", "b", "letter"]
    assert differ[["row", "truth", "a", "b"]].values.tolist() == [[1, "b", "c", "b"], [4, "b", "c", "a"], [7, "b", "b", "a"]]
    old = {"test_index": [5, 2], "y_true": ["c", "c"], "y_pred": ["a", "c"], "classes": ["a", "b", "c"]}  # no repeat: all repeat 0
    stored_predictions["old"] = old
    assert results.misclassified(_eval("old", 0.5, None), texts=texts)["row"].tolist() == [5]
    missing = results.misclassified(ev_a)  # its letters file is gone: the rows still, no texts, and why
    assert len(missing) == 2 and (missing["letter"] == "").all() and "unavailable" in missing.attrs["note"]
    with pytest.raises(ClinBenchError, match="same letters"):
        results.disagreements([ev_a, _eval("c", 0.5, data_hash="f" * 64)])
