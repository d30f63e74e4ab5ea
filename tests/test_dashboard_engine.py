"""The engine functions the dashboard stands on: significance, stored results, saved datasets,
one-letter classification, UMAP maps and exports. Real computations on tiny models."""

from __future__ import annotations

import io
import json
import zipfile

import numpy as np
import pytest

from engine import datasets, evaluation, experiment, export, predict, projection, results
from engine.errors import DataError

OPTS = {"max_length": 64, "grid": False, "n_boot": 100}


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("CLINBENCH_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


@pytest.fixture
def two_evals(cache, small_csv, tiny_encoder):
    ds = experiment.DataSpec(str(small_csv), "letter", "specialty").load()
    out = [experiment.evaluate_step(ds, str(tiny_encoder), m, OPTS) for m in ("svc", "logreg")]
    return ds, out


def test_paired_test_sees_no_difference_between_identical_predictions():
    rng = np.random.default_rng(0)
    y = rng.choice(list("abc"), 200)
    pred = np.where(rng.random(200) < 0.7, y, rng.choice(list("abc"), 200))
    res = evaluation.paired_macro_f1_test(y, pred, pred, n_boot=300)
    assert res["diff"] == 0 and res["p_bootstrap"] == 1.0 and res["p_mcnemar"] == 1.0


def test_paired_test_detects_a_clearly_better_classifier_and_not_a_marginal_one():
    rng = np.random.default_rng(1)
    y = rng.choice(list("abcd"), 300)
    good = np.where(rng.random(300) < 0.9, y, rng.choice(list("abcd"), 300))
    poor = np.where(rng.random(300) < 0.5, y, rng.choice(list("abcd"), 300))
    res = evaluation.paired_macro_f1_test(y, good, poor, n_boot=500)
    assert res["diff"] > 0.2 and res["diff_ci"][0] > 0 and res["p_bootstrap"] < 0.01 and res["p_mcnemar"] < 0.01
    almost = good.copy()
    almost[:2] = np.where(almost[:2] == y[:2], "x", almost[:2])  # two more mistakes only
    res = evaluation.paired_macro_f1_test(y, good, almost, n_boot=500)
    assert res["p_bootstrap"] > 0.05 and res["diff_ci"][0] <= 0 <= res["diff_ci"][1] + 1e-9


def test_holm_adjustment():
    assert evaluation.holm([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])


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
    from engine import jobs

    spec = experiment.parse_spec(
        {
            "name": "r",
            "data": {"path": str(small_csv), "text_column": "letter", "label_column": "specialty"},
            "models": [str(tiny_encoder)],
            "methods": ["svc"],
            "options": OPTS,
        }
    )
    run_id = jobs.submit(spec, start_worker=False)
    assert results.list_evaluations(run_id=run_id)[0] == []  # nothing finished yet


def test_saved_datasets_round_trip_and_errors(cache, small_csv):
    content = small_csv.read_bytes()
    path = datasets.store_upload("my letters.csv", content)
    assert path.read_bytes() == content and datasets.store_upload("my letters.csv", content) == path
    with pytest.raises(DataError, match="unsupported file type"):
        datasets.store_upload("letters.xlsx", b"x")
    with pytest.raises(DataError, match=r"text column 'txt' not found.*Did you mean 'text'|not found"):
        datasets.save(path, "mine", "txt", "specialty")
    saved = datasets.save(path, "mine", "letter", "specialty")
    listed, skipped = datasets.list_saved()
    assert [s.id for s in listed] == [saved.id] and not skipped and saved.n_letters == 60
    ds = experiment.parse_spec({"data": saved.spec_data(), "models": ["minilm"]}).data.load()
    assert ds.data_hash == saved.data_hash
    datasets.delete(saved.id)
    assert datasets.list_saved()[0] == [] and path.exists()  # the file stays


def test_classify_one_letter_agrees_with_the_stored_predictions(cache, two_evals):
    ds, _ = two_evals
    evals, _ = results.list_evaluations()
    svc = next(e for e in evals if e.method == "svc")
    pred = results.predictions(svc)
    agree = 0
    for i, stored in list(zip(pred["test_index"], pred["y_pred"]))[:8]:
        (row,) = predict.classify(ds.texts[i], [svc])
        assert row["error"] is None and row["latency_ms"] > 0 and set(row["scores"]) == set(ds.classes)
        agree += row["predicted"] == stored
    assert agree >= 7  # bf16 batches vs a single letter may move a near-tie
    rows = predict.classify("Patient with chest pain and dyspnoea.", evals)
    assert len(rows) == 2 and all(r["predicted"] in ds.classes for r in rows)
    assert not list((cache / "embeddings").glob("*")) or all("letter" not in p.name for p in (cache / "embeddings").iterdir())
    vote = predict.agreement(rows)
    assert vote["n"] == 2 and vote["label"] in ds.classes
    with pytest.raises(Exception, match="empty"):
        predict.classify("   ", evals)


def test_classify_does_not_store_the_letter(cache, two_evals):
    before = sorted(p.name for p in (cache / "embeddings").iterdir())
    evals, _ = results.list_evaluations()
    predict.classify("A letter that must not be kept.", evals[:1])
    assert sorted(p.name for p in (cache / "embeddings").iterdir()) == before


def test_projection_is_cached_and_checked(cache, two_evals):
    evals, _ = results.list_evaluations()
    key = evals[0].embeddings_key
    assert projection.cached(key) is None
    coords = projection.project(key)
    assert coords.shape == (60, 2) and np.isfinite(coords).all()
    assert np.array_equal(projection.cached(key), coords)
    assert len(list((cache / "projections").glob("*.npy"))) == 1
    npy = cache / "embeddings" / f"{key}.npy"
    arr = np.load(npy)
    arr[0, 0] += 1
    np.save(npy, arr)
    with pytest.raises(Exception, match="does not match"):
        projection.project(key, n_neighbors=5)


def test_exports_png_svg_html_csv_and_report(cache, two_evals):
    from PIL import Image

    from ui import report

    evals, _ = results.list_evaluations()
    figs, tables = report.figures(evals), report.tables(evals)
    assert len(figs) == 2 + len(evals)
    png = export.figure_bytes(figs["macro-F1 by model and method"], "png")
    img = Image.open(io.BytesIO(png))
    img.verify()
    assert img.format == "PNG" and img.size[0] >= 1000
    svg = export.figure_bytes(figs["per-class F1"], "svg").decode()
    assert svg.startswith("<svg") and "Per-class F1" in svg
    html = export.figure_bytes(figs["per-class F1"], "html").decode()
    assert len(html) > 1_000_000 and 'src="http' not in html  # plotly.js embedded, nothing fetched: opens offline
    zf = zipfile.ZipFile(io.BytesIO(export.report_zip(figs, tables, {"dataset": "small"})))
    names = set(zf.namelist())
    assert "figures/macro-f1-by-model-and-method.png" in names and "tables/macro-f1-by-model-and-method.csv" in names
    meta = json.loads(zf.read("report.json"))
    assert len(meta["figures"]) == len(figs) and meta["dataset"] == "small"
