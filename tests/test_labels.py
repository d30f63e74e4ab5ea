"""Multi-label letters: no label is a valid outcome, one 0/1 column per label, and the multi-label validation summary
(engine.labels, read by engine.data)."""

from __future__ import annotations

import json

import pytest

from engine.cache import artifacts
from engine.data import dataset, datasets, labels
from engine.errors import DataError, SpecError
from engine.runs import experiment
from tests.conftest import SHARED_DATA, cli, write_csv

HOC = SHARED_DATA / "hallmarks_of_cancer.jsonl"


def codes(report):
    return {i.code for i in report.issues}


def write_jsonl(path, label_lists):
    path.write_text("\n".join(json.dumps({"text": f"abstract number {i}", "labels": labs}) for i, labs in enumerate(label_lists)))
    return path


JSONL_LABELS = [["x", "y"], ["x"], ["y"], ["x", "y"], [], [], ["x"], ["y"]]


def test_jsonl_empty_lists_are_kept_as_no_label(tmp_path):
    ds = dataset.load_dataset(write_jsonl(tmp_path / "hoc.jsonl", JSONL_LABELS), "text", "labels")
    assert len(ds) == 8 and ds.multi_label and ds.labels[4] == () and ds.labels[5] == () and ds.labels[0] == ("x", "y")
    assert ds.classes == ["x", "y"] and "" not in ds.classes
    r = ds.report
    assert r.ok and r.no_label == 2 and r.class_counts == {"x": 4, "y": 4}
    warning = next(i for i in r.warnings if i.code == "no_label")
    assert "2 letter(s) carry no label" in warning.message and "rows 5, 6" in warning.message and '"no label" outcomes' in warning.message
    s = r.label_summary
    assert s["cardinality"] == 1.0 and s["labels_per_letter"] == {0: 2, 1: 4, 2: 2} and s["no_label"] == 2
    assert s["cooccurrence"] == {"labels": ["x", "y"], "matrix": [[4, 2], [2, 4]]}
    d = json.loads(json.dumps(r.to_dict()))
    assert d["no_label"] == 2 and d["label_summary"]["labels_per_letter"] == {"0": 2, "1": 4, "2": 2}
    assert d["label_summary"]["cooccurrence"]["matrix"] == [[4, 2], [2, 4]]
    # the empty tuple is part of what a classifier depends on
    other = dataset.load_dataset(write_jsonl(tmp_path / "b.jsonl", [*JSONL_LABELS[:4], ["x"], [], ["x"], ["y"]]), "text", "labels")
    assert other.text_hash == ds.text_hash and other.data_hash != ds.data_hash


def test_csv_separator_with_empty_cells(tmp_path):
    cells = ["a|b", "a", "", "b", "a|c", "c|b", "", " | "]
    rows = [{"text": f"letter number {i}", "label": c} for i, c in enumerate(cells)]
    ds = dataset.load_dataset(write_csv(tmp_path / "m.csv", rows), "text", "label", label_sep="|")
    assert ds.labels == [("a", "b"), ("a",), (), ("b",), ("a", "c"), ("b", "c"), (), ()]
    assert ds.classes == ["a", "b", "c"] and ds.report.no_label == 3
    assert "rows 3, 7, 8" in next(i.message for i in ds.report.warnings if i.code == "no_label")
    s = ds.report.label_summary
    assert s["labels_per_letter"] == {0: 3, 1: 2, 2: 3} and s["cardinality"] == 1.0
    assert s["cooccurrence"]["matrix"] == [[3, 1, 1], [1, 3, 1], [1, 1, 2]]


def test_an_empty_label_is_still_an_error_in_single_label_data(tmp_path):
    rows = [{"text": f"letter number {i}", "label": "ab"[i % 2]} for i in range(10)]
    rows[3]["label"] = ""
    report = dataset.validate_file(write_csv(tmp_path / "s.csv", rows), "text", "label")
    assert not report.ok and "empty_label" in codes(report) and "no_label" not in codes(report)
    rows[3]["label"] = "a"
    report = dataset.validate_file(write_csv(tmp_path / "s.csv", rows), "text", "label")
    assert report.ok and report.label_summary is None and report.no_label == 0 and report.to_dict()["label_summary"] is None


COLUMN_ROWS = [
    {"text": "letter one", "a": "1", "b": "0", "c": "1", "note": "x"},
    {"text": "letter two", "a": "true", "b": "yes", "c": "", "note": "x"},
    {"text": "letter three", "a": "0", "b": "1", "c": "no", "note": "x"},
    {"text": "letter four", "a": "", "b": "", "c": "", "note": "x"},
    {"text": "letter five", "a": "YES", "b": "False", "c": "1", "note": "x"},
    {"text": "letter six", "a": "0", "b": "1", "c": "0", "note": "x"},
]


def test_label_columns_read_0_1_cells(tmp_path):
    path = write_csv(tmp_path / "cols.csv", COLUMN_ROWS)
    ds = dataset.load_dataset(path, "text", "no such column", label_columns="a, b,c")  # the label column is ignored
    assert ds.labels == [("a", "c"), ("a", "b"), ("b",), (), ("a", "c"), ("b",)]
    assert ds.multi_label and ds.classes == ["a", "b", "c"] and ds.label_column == "a, b, c"
    assert ds.options == {"label_columns": ["a", "b", "c"]}
    assert ds.report.no_label == 1 and "0 in every label column" in next(i.message for i in ds.report.warnings if i.code == "no_label")
    s = ds.report.label_summary
    assert s["labels_per_letter"] == {0: 1, 1: 2, 2: 3} and s["cardinality"] == pytest.approx(8 / 6, abs=1e-4)
    assert s["cooccurrence"] == {"labels": ["a", "b", "c"], "matrix": [[3, 1, 2], [1, 3, 0], [2, 0, 2]]}
    assert dataset.load_dataset(path, "text", "label", label_columns=["a", "b", "c"]).data_hash == ds.data_hash


def test_label_columns_errors_name_rows_and_columns(tmp_path):
    rows = [dict(r) for r in COLUMN_ROWS]
    rows[2]["b"], rows[4]["b"] = "2", "maybe"
    path = write_csv(tmp_path / "bad.csv", rows)
    with pytest.raises(DataError) as exc:
        dataset.load_dataset(path, "text", "label", label_columns="a,b,c")
    msg = str(exc.value)
    assert "label column 'b' must hold 0 or 1" in msg and "rows 3 ('2'), 5 ('maybe')" in msg and "'a'" not in msg
    report = dataset.validate_file(path, "text", "label", label_columns="a,bb,c")
    assert codes(report) == {"missing_column"}
    msg = report.errors[0].message
    assert "label column 'bb' not found" in msg and "Columns present: text, a, b, c, note" in msg and "Did you mean 'b'?" in msg
    report = dataset.validate_file(path, "text", "label", label_columns=["a"])
    assert codes(report) == {"too_few_label_columns"} and "at least 2" in report.errors[0].message
    report = dataset.validate_file(path, "text", "label", label_columns="a,c", label_sep="|")
    assert "label_options" in codes(report)
    report = dataset.validate_file(path, "text", "label", label_columns="text,a")
    assert "same_column" in codes(report)
    with pytest.raises(DataError, match="template uses the label column 'c'"):
        dataset.load_dataset(path, "text", "label", label_columns="a,c", text_template="{text} {c}")


def test_a_label_column_without_any_1_is_a_label_without_letters(tmp_path):
    rows = [{**r, "d": "0"} for r in COLUMN_ROWS]
    report = dataset.validate_file(write_csv(tmp_path / "d.csv", rows), "text", "label", label_columns="a,b,c,d")
    assert report.class_counts["d"] == 0 and "rare_label" in codes(report) and "'d' (no letter)" in report.errors[0].message


def test_summary_and_options():
    s = labels.summary([("a",), (), ("a", "b"), ("b",), ()], classes=["a", "b", "c"])
    assert s["labels_per_letter"] == {0: 2, 1: 2, 2: 1} and s["no_label"] == 2 and s["cardinality"] == 0.8
    assert s["cooccurrence"] == {"labels": ["a", "b", "c"], "matrix": [[2, 1, 0], [1, 2, 0], [0, 0, 0]]}
    assert labels.summary([]) == {"cardinality": 0.0, "labels_per_letter": {}, "no_label": 0, "cooccurrence": {"labels": [], "matrix": []}}
    assert labels.columns_option(" a, b ,,a") == ["a", "b"] and labels.columns_option(["x", "y"]) == ["x", "y"]
    assert labels.columns_option(None) is None and labels.columns_option("") is None
    with pytest.raises(DataError, match="label_columns must list column names"):
        labels.columns_option(3)
    assert labels.parse(["b", "", None, "a", "a"], None) == ("a", "b") and labels.parse([], None) == () and labels.parse("", "|") is None


def test_label_columns_in_a_spec_a_saved_dataset_and_a_manifest(cache, tmp_path):
    path = datasets.store_upload("cols.csv", write_csv(tmp_path / "cols.csv", COLUMN_ROWS).read_bytes())
    saved = datasets.save(path, "columns", "text", "label", label_columns="a,b,c")
    assert saved.options == {"label_columns": ["a", "b", "c"]} and saved.classes == ["a", "b", "c"] and saved.label_column == "a, b, c"
    again = datasets.get(saved.id)  # reloaded from its JSON description
    ds = experiment.parse_spec({"data": again.spec_data(), "models": ["tfidf"]}).data.load()
    assert ds.labels[3] == () and ds.labels[0] == ("a", "c") and ds.data_hash == saved.data_hash
    # a spec's data block: label_columns as a list (or 'a,b,c'), no label_column needed
    for cols in (["a", "b", "c"], "a,b,c"):
        spec = experiment.parse_spec({"data": {"path": str(path), "text_column": "text", "label_columns": cols}, "models": ["tfidf"]})
        assert spec.data.label_columns == ["a", "b", "c"] and spec.data.load().data_hash == saved.data_hash
        assert json.loads(json.dumps(spec.to_dict()))["data"]["label_columns"] == ["a", "b", "c"]
    with pytest.raises(SpecError, match="label_columns"):
        experiment.parse_spec({"data": {"path": str(path), "text_column": "text", "label_columns": 5}, "models": ["tfidf"]})
    with pytest.raises(SpecError, match="data needs label_column"):
        experiment.parse_spec({"data": {"path": str(path), "text_column": "text"}, "models": ["tfidf"]})
    # what a manifest records is what a rerun reads back (engine.replication passes engine.data.dataset.DATA_OPTIONS through)
    d = artifacts.data_manifest(ds)
    assert d["label_columns"] == ["a", "b", "c"]
    opts = {k: d[k] for k in dataset.DATA_OPTIONS if d.get(k)}
    rerun = dataset.load_dataset(d["source"], d["text_column"], d["label_column"], label_sep=d.get("label_sep"), **opts)
    assert rerun.data_hash == ds.data_hash == d["data_hash"]
    spec = {"data": {"path": d["source"], "text_column": d["text_column"], "label_column": d["label_column"], **opts}, "models": ["tfidf"]}
    assert experiment.parse_spec(spec).data.load().data_hash == ds.data_hash


def test_a_saved_jsonl_with_empty_lists_reloads(cache, tmp_path):
    path = datasets.store_upload("hoc.jsonl", write_jsonl(tmp_path / "hoc.jsonl", JSONL_LABELS).read_bytes())
    saved = datasets.save(path, "hoc", "text", "labels")
    ds = experiment.parse_spec({"data": datasets.get(saved.id).spec_data(), "models": ["tfidf"]}).data.load()
    assert ds.data_hash == saved.data_hash and ds.labels.count(()) == 2 and saved.n_letters == 8


def test_cli_validate_prints_the_multi_label_summary(tmp_path):
    path = write_csv(tmp_path / "cols.csv", COLUMN_ROWS)
    out = cli("data", "validate", str(path), "--label-columns", "a,b,c")
    assert out.returncode == 0, out.stderr
    assert "(multi-label)" in out.stdout and "(no label: kept, a valid outcome)" in out.stdout
    assert "Labels per letter: mean 1.33" in out.stdout and "0: 1, 1: 2, 2: 3" in out.stdout and "Co-occurrence" in out.stdout
    assert "WARNING: 1 letter(s) carry no label" in out.stdout and "OK: usable." in out.stdout
    out = cli("data", "validate", str(path), "--label-columns", "a,b,c", "--json")
    d = json.loads(out.stdout)
    assert d["no_label"] == 1 and d["label_summary"]["cooccurrence"]["labels"] == ["a", "b", "c"]
    single = write_csv(tmp_path / "single.csv", [{"text": f"letter number {i}", "label": "ab"[i % 2]} for i in range(10)])
    out = cli("data", "validate", str(single))
    assert out.stdout.splitlines()[1:] == [f"  {'a':40s} 5", f"  {'b':40s} 5", "OK: usable."]  # single-label output unchanged
    assert "--label-columns" in cli("data", "validate", "--help").stdout


@pytest.mark.skipif(not HOC.exists(), reason="the Hallmarks of Cancer file is not in ../shared/data")
def test_the_hallmarks_of_cancer_corpus_loads():
    ds = dataset.load_dataset(HOC, "text", "labels")
    s = ds.report.label_summary
    assert len(ds) == 1852 and len(ds.classes) == 10 and ds.report.no_label == 272 and ds.labels.count(()) == 272
    assert s["labels_per_letter"] == {0: 272, 1: 920, 2: 478, 3: 145, 4: 30, 5: 7}
    assert s["cardinality"] == pytest.approx((920 + 2 * 478 + 3 * 145 + 4 * 30 + 5 * 7) / 1852, abs=1e-4)
    matrix = s["cooccurrence"]["matrix"]
    assert [matrix[i][i] for i in range(10)] == [ds.report.class_counts[c] for c in s["cooccurrence"]["labels"]]
    assert all(matrix[i][j] == matrix[j][i] for i in range(10) for j in range(10))


def test_letters_with_no_label_become_a_class_only_when_asked(default_ds, cache):
    from engine.data import labels
    from engine.options.groups import ProtocolOptions
    from engine.protocols import plans
    from tests.conftest import run_step
    from tests.test_multilabel import multi_label_ds

    ds = multi_label_ds(default_ds)
    assert () in ds.labels and labels.NO_LABEL not in ds.classes
    assert plans.prepare(ds, ProtocolOptions()) is ds  # outcome (default): kept as every label absent
    asked = plans.prepare(ds, ProtocolOptions(no_label="class"))
    assert labels.NO_LABEL in asked.classes and () not in asked.labels
    assert [labs for labs in asked.labels if labs != (labels.NO_LABEL,)] == [labs for labs in ds.labels if labs]
    res = run_step(ds, "tfidf", "tfidf", protocol="holdout", n_boot=100, no_label="class")
    assert labels.NO_LABEL in res.metrics["per_class"] and res.metrics["per_class"][labels.NO_LABEL]["support"] > 0
