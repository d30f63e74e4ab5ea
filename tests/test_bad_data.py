"""Bad input files (issue 16, the Data part): ragged rows, text column = label column or leaking it, control
characters in labels, UTF-16 and byte-order marks, and the column guess of the Data page."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from engine.data import dataset
from engine.errors import DataError
from tests.conftest import cli, write_csv

ROWS = [{"text": f"letter number {i} about {lab}", "label": lab} for i, lab in enumerate(["a", "b"] * 5)]


def codes(report):
    return {i.code for i in report.issues}


def message(report, code):
    return next(i.message for i in report.issues if i.code == code)


def validate_cli(path, text="text", label="label"):
    res = cli("data", "validate", str(path), "--text-column", text, "--label-column", label, timeout=120)
    assert "Traceback" not in res.stderr + res.stdout
    return res


# --- 1. ragged rows ----------------------------------------------------------


def test_rows_with_one_field_more_than_the_header_are_refused_not_shifted(tmp_path):
    path = tmp_path / "extra.csv"
    path.write_text("text,label\n" + "".join(f"letter {i},{'ab'[i % 2]},x\n" for i in range(6)))
    with pytest.raises(DataError) as exc:
        dataset.read_table(path)
    msg = str(exc.value)
    assert "ragged" in msg and "lines 2, 3, 4, 5, 6, 7 have 3 fields" in msg and "2 in the header" in msg
    assert "quote" in msg  # how to fix


def test_some_ragged_rows_more_and_fewer_fields_are_named_by_line(tmp_path):
    path = tmp_path / "ragged.csv"
    path.write_text('text,label\n"a letter\nover two lines",a\nshort\nok letter,b\ntoo,many,fields\nfine,a\n')
    with pytest.raises(DataError) as exc:
        dataset.read_table(path)
    msg = str(exc.value)
    assert "ragged" in msg and "line 4 has 1 field; line 6 has 3 fields" in msg
    res = validate_cli(path)
    assert res.returncode != 0 and "ragged" in res.stdout + res.stderr


def test_a_well_formed_csv_with_an_unnamed_first_column_keeps_its_columns(tmp_path):
    path = tmp_path / "ok.csv"
    path.write_text(",text,label\n0,hello there,a\n1,general letter,b\n")
    df = dataset.read_table(path)
    assert list(df.columns)[1:] == ["text", "label"] and df["label"].tolist() == ["a", "b"]


# --- 2. text column and label column ----------------------------------------


def test_the_same_column_for_text_and_label_is_an_error(tmp_path):
    path = write_csv(tmp_path / "x.csv", ROWS)
    report = dataset.validate_file(path, "label", "label")
    assert not report.ok and "same_column" in codes(report)
    assert "must differ" in message(report, "same_column")
    res = validate_cli(path, "label", "label")
    assert res.returncode != 0 and "must differ" in res.stdout + res.stderr


def test_a_text_column_that_spells_out_the_label_gets_a_leakage_warning(tmp_path):
    rows = [{"text": f" {lab.upper()} ", "label": lab} for lab in ["cardio", "neuro", "ortho"] * 4]
    report = dataset.validate_file(write_csv(tmp_path / "leak.csv", rows), "text", "label")
    assert "text_predicts_label" in codes(report)
    msg = message(report, "text_predicts_label")
    assert "'text'" in msg and "'label'" in msg and "leak" in msg


def test_a_one_to_one_map_between_texts_and_labels_gets_a_leakage_warning(tmp_path):
    names = {"a": "cardiology letter", "b": "neurology letter"}
    rows = [{"text": names[lab], "label": lab} for lab in ["a", "b"] * 4]
    report = dataset.validate_file(write_csv(tmp_path / "leak.csv", rows), "text", "label")
    assert "text_predicts_label" in codes(report)


def test_ordinary_datasets_get_no_leakage_warning(tmp_path, default_ds):
    report = dataset.validate_file(write_csv(tmp_path / "ok.csv", ROWS), "text", "label")
    assert "text_predicts_label" not in codes(report)
    assert "text_predicts_label" not in codes(default_ds.report)


# --- 3. control characters in labels ----------------------------------------


def test_a_nul_byte_in_a_label_does_not_create_a_class(tmp_path):
    rows = [dict(r) for r in ROWS]
    rows[2]["label"] = "a\x00"
    rows[5]["label"] = "\x1bb"
    path = write_csv(tmp_path / "nul.csv", rows)
    ds = dataset.load_dataset(path, "text", "label")
    assert ds.classes == ["a", "b"]
    msg = message(ds.report, "label_control_characters")
    assert "rows 3, 6" in msg and "removed" in msg
    res = validate_cli(path)
    assert res.returncode == 0 and "rows 3, 6" in res.stdout


def test_a_label_of_control_characters_only_is_an_error(tmp_path):
    path = tmp_path / "ctl.jsonl"
    rows = [dict(r) for r in ROWS]
    rows[4]["label"] = "\x00\x01"
    path.write_text("\n".join(json.dumps(r) for r in rows))
    report = dataset.validate_file(path, "text", "label")
    assert not report.ok and "label_only_control_characters" in codes(report)
    assert "row 5" in message(report, "label_only_control_characters")


def test_tabs_and_line_breaks_in_texts_are_kept(tmp_path):
    rows = [dict(r) for r in ROWS]
    rows[0]["text"] = "first line\n\tsecond line"
    ds = dataset.load_dataset(write_csv(tmp_path / "x.csv", rows), "text", "label")
    assert ds.texts[0] == "first line\n\tsecond line"


# --- 4. encodings ------------------------------------------------------------

CSV_TEXT = "text,label\n" + "".join(f"café letter {i},{'ab'[i % 2]}\n" for i in range(6))


@pytest.mark.parametrize("encoding", ["utf-16", "utf-16-le", "utf-16-be", "utf-8-sig"])
def test_files_with_a_byte_order_mark_are_read(tmp_path, encoding):
    path = tmp_path / "bom.csv"
    bom = {"utf-16-le": b"\xff\xfe", "utf-16-be": b"\xfe\xff"}.get(encoding, b"")
    path.write_bytes(bom + CSV_TEXT.encode(encoding))
    ds = dataset.load_dataset(path, "text", "label")
    assert ds.texts[0] == "café letter 0" and ds.classes == ["a", "b"]
    assert validate_cli(path).returncode == 0


def test_utf16_tsv_as_excel_saves_unicode_text(tmp_path):
    path = tmp_path / "excel.tsv"
    path.write_bytes(CSV_TEXT.replace(",", "\t").replace("\n", "\r\n").encode("utf-16"))
    assert dataset.read_table(path)["label"].tolist() == ["a", "b"] * 3


def test_latin1_says_how_to_convert_and_where(tmp_path):
    path = tmp_path / "latin1.csv"
    path.write_bytes(CSV_TEXT.encode("latin-1"))
    with pytest.raises(DataError) as exc:
        dataset.read_table(path)
    msg = str(exc.value)
    assert "not UTF-8" in msg and "byte offset 14" in msg and "line 2" in msg
    assert "CSV UTF-8" in msg and "iconv -f latin1 -t utf-8" in msg
    res = validate_cli(path)
    assert res.returncode != 0 and "iconv" in res.stdout + res.stderr


def test_utf16_without_a_byte_order_mark_is_named(tmp_path):
    path = tmp_path / "nobom.csv"
    path.write_bytes(CSV_TEXT.encode("utf-16-le"))
    with pytest.raises(DataError, match="UTF-16 without a byte-order mark"):
        dataset.read_table(path)


# --- 5. the column guess -----------------------------------------------------


def test_guess_columns_picks_the_free_text_and_a_low_cardinality_label():
    df = pd.DataFrame(
        {
            "id": [str(i) for i in range(8)],
            "note": [f"the patient number {i} was seen in clinic today with a long story" for i in range(8)],
            "specialty": ["cardio", "neuro"] * 4,
            "site": ["x"] * 8,
            "doctor": [f"dr {i % 5}" for i in range(8)],
        }
    )
    assert dataset.guess_columns(df) == ("note", "specialty")


def test_guess_columns_on_few_columns():
    assert dataset.guess_columns(pd.DataFrame({"label": ["a", "b"], "text": ["long letter one", "long letter two"]})) == ("text", "label")
    assert dataset.guess_columns(pd.DataFrame({"only": ["a", "b"]})) == ("only", "only")
    named = pd.DataFrame({"sex": ["f", "m"] * 3, "specialty": ["a", "b", "c"] * 2, "text": ["a long letter"] * 6})
    assert dataset.guess_columns(named) == ("text", "specialty")
    lists = pd.DataFrame({"text": ["a long letter", "another long one"], "labels": [["x"], ["x", "y"]]})
    assert dataset.guess_columns(lists) == ("text", "labels")


def test_guess_columns_through_the_api():
    from engine import api

    assert api.guess_columns(pd.DataFrame({"y": ["a", "b", "a"], "x": ["one long letter", "two long letters", "three"]})) == ("x", "y")
