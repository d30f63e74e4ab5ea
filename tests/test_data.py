"""Loading, validation (one test per error the issue names) and the split."""

from __future__ import annotations

import json

import pytest

from engine.data import dataset
from engine.errors import DataError
from tests.conftest import write_csv

ROWS = [{"text": f"letter number {i} about {lab}", "label": lab} for i, lab in enumerate(["a", "b"] * 5)]


def codes(report):
    return {i.code for i in report.issues}


def test_good_csv_loads(tmp_path):
    ds = dataset.load_dataset(write_csv(tmp_path / "ok.csv", ROWS), "text", "label")
    assert len(ds) == 10 and ds.classes == ["a", "b"] and not ds.multi_label
    assert ds.report.ok and not ds.report.issues


def test_missing_column_names_alternatives(tmp_path):
    path = write_csv(tmp_path / "x.csv", ROWS)
    with pytest.raises(DataError) as exc:
        dataset.load_dataset(path, "txt", "label")
    msg = str(exc.value)
    assert "'txt' not found" in msg and "Columns present: text, label" in msg and "Did you mean 'text'" in msg


def test_empty_and_nan_text_rows_are_listed(tmp_path):
    rows = [dict(r) for r in ROWS]
    rows[2]["text"], rows[5]["text"] = "", "NaN"
    report = dataset.validate_file(write_csv(tmp_path / "x.csv", rows), "text", "label")
    assert not report.ok and "empty_text" in codes(report)
    msg = next(i.message for i in report.errors if i.code == "empty_text")
    assert "rows 3, 6" in msg and "Fill in or delete" in msg


def test_missing_label(tmp_path):
    rows = [dict(r) for r in ROWS]
    rows[0]["label"] = ""
    report = dataset.validate_file(write_csv(tmp_path / "x.csv", rows), "text", "label")
    assert "empty_label" in codes(report) and "rows 1" in report.errors[0].message


def test_not_utf8(tmp_path):
    path = tmp_path / "latin1.csv"
    path.write_bytes("text,label\ncaf\xe9 au lait,a\nthe,b\n".encode("latin-1"))
    with pytest.raises(DataError) as exc:
        dataset.load_dataset(path, "text", "label")
    assert "not UTF-8" in str(exc.value) and "line 2" in str(exc.value) and "Re-save" in str(exc.value)


def test_label_with_fewer_than_two_letters(tmp_path):
    rows = ROWS + [{"text": "a lonely letter", "label": "rare"}]
    report = dataset.validate_file(write_csv(tmp_path / "x.csv", rows), "text", "label")
    assert "rare_label" in codes(report)
    assert "'rare' (row 11)" in report.errors[0].message


def test_only_one_class(tmp_path):
    rows = [{"text": f"t{i}", "label": "same"} for i in range(5)]
    report = dataset.validate_file(write_csv(tmp_path / "x.csv", rows), "text", "label")
    assert "one_class" in codes(report) and "right label column" in report.errors[0].message


def test_duplicates_are_a_warning_not_an_error(tmp_path):
    rows = ROWS + [{"text": ROWS[0]["text"].upper(), "label": "b"}]
    report = dataset.validate_file(write_csv(tmp_path / "x.csv", rows), "text", "label")
    assert report.ok
    assert {"duplicate_text", "conflicting_labels"} <= {w.code for w in report.warnings}


def test_file_over_size_limit(tmp_path, monkeypatch):
    path = write_csv(tmp_path / "big.csv", ROWS * 200)
    monkeypatch.setenv(dataset.MAX_FILE_MB_ENV, "0.01")
    with pytest.raises(DataError) as exc:
        dataset.load_dataset(path, "text", "label")
    assert "over the 0.01 MB limit" in str(exc.value)
    assert dataset.MAX_FILE_MB_ENV in str(exc.value)


@pytest.mark.parametrize(
    "name,content,needle",
    [
        ("x.xls", b"PK", "unsupported file type"),
        ("x.xlsx", b"PK\x03\x04 damaged", "x.xlsx is not an Excel workbook: it is a ZIP archive"),
        ("empty.csv", b"", "is empty"),
        ("bad.jsonl", b'{"text": "a", "label": "x"}\n{oops\n', "line 2: not valid JSON"),
        ("list.jsonl", b"[1, 2]\n", "expected a JSON object"),
    ],
)
def test_unreadable_files(tmp_path, name, content, needle):
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(DataError, match=needle):
        dataset.load_dataset(path, "text", "label")


def test_missing_file():
    with pytest.raises(DataError, match="File not found"):
        dataset.load_dataset("no/such/file.csv", "text", "label")


def test_jsonl_multilabel_lists(tmp_path):
    path = tmp_path / "hoc.jsonl"
    lines = [{"text": f"abstract {i}", "labels": labs} for i, labs in enumerate([["x", "y"], ["x"], ["y"], ["x", "y"], []])]
    path.write_text("\n".join(json.dumps(r) for r in lines[:4]))
    ds = dataset.load_dataset(path, "text", "labels")
    assert ds.multi_label and ds.labels[0] == ("x", "y") and ds.classes == ["x", "y"]


def test_csv_multilabel_with_separator(tmp_path):
    rows = [{"text": f"t{i}", "label": labs} for i, labs in enumerate(["a|b", "a", "b", "b | a"])]
    ds = dataset.load_dataset(write_csv(tmp_path / "m.csv", rows), "text", "label", label_sep="|")
    assert ds.multi_label and ds.labels[3] == ("a", "b")


def test_hashes_depend_on_content(tmp_path):
    a = dataset.load_dataset(write_csv(tmp_path / "a.csv", ROWS), "text", "label")
    rows = [dict(r) for r in ROWS]
    rows[0]["label"] = "b"
    b = dataset.load_dataset(write_csv(tmp_path / "b.csv", rows), "text", "label")
    assert a.text_hash == b.text_hash and a.data_hash != b.data_hash


def test_default_dataset_is_the_documented_one(default_ds):
    assert len(default_ds) == 600 and len(default_ds.classes) == 5
    assert default_ds.report.ok and not default_ds.report.warnings


def test_a_label_too_small_for_cross_validation_is_only_warned(tmp_path):
    rows = [{"text": f"letter number {i}", "label": "x" if i < 5 else "y"} for i in range(8)]
    report = dataset.validate_file(write_csv(tmp_path / "few.csv", rows), "text", "label")
    assert report.ok and [i.code for i in report.warnings] == ["few_letters_for_cv"]
    assert "'y' (3)" in report.warnings[0].message and "fewer folds" in report.warnings[0].message
