"""Stored evaluations as the pages read them: listing, filters, tables, significance, damaged folders skipped."""

from __future__ import annotations

import pytest

from engine import experiment, results


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
    sig = results.significance(evals, n_boot=200)
    assert len(sig) == 1 and sig["best"][0] == table["evaluation"][0]
    assert sig["difference"][0] == pytest.approx(table["macro_f1"][0] - table["macro_f1"][1])
    assert results.letters(evals[0]).data_hash == ds.data_hash


def test_results_filter_by_run(cache, small_csv, tiny_encoder):
    from engine import api, jobs

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
