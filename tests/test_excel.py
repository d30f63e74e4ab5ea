"""Excel workbooks (issue 30): an .xlsx of letters through `data validate`, `evaluate` and the Data page; formulas read as
their saved values; a file that is not what its name says named for what it is; the column guess never proposing a list or
numeric column as the text."""

from __future__ import annotations

import io
import json
import zipfile
from collections import Counter
from pathlib import Path

import openpyxl
import pandas as pd
import pytest

from engine.data import dataset, tables
from engine.errors import DataError
from tests.conftest import cli
from tests.test_app import page

FORMULA = '="neuro"&"logy"'  # B3 of the letters sheet: its saved value is 'neurology'


def workbook(path: Path, rows: list[dict], *, saved_values: bool = True) -> Path:
    """A workbook as Excel saves it: a 'notes' sheet first, then 'letters' (header `letter, specialty, age`); the second
    letter's label is a formula whose value is saved with it (openpyxl writes none: the test adds it, as Excel would)."""
    wb = openpyxl.Workbook()
    wb.active.title = "notes"
    wb.active.append(["exported from the clinic's letters database"])
    ws = wb.create_sheet("letters")
    ws.append(["letter", "specialty", "age"])
    for i, r in enumerate(rows):
        ws.append([r["letter"], r["specialty"], 40 + i])
    ws["B3"] = FORMULA
    buf = io.BytesIO()
    wb.save(buf)
    if not saved_values:
        path.write_bytes(buf.getvalue())
        return path
    zin, out = zipfile.ZipFile(buf), io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as zout:
        for item in zin.infolist():
            data = zin.read(item.filename)
            if item.filename == "xl/worksheets/sheet2.xml":
                data = data.replace(b'<c r="B3"><f>', b'<c r="B3" t="str"><f>').replace(b"<v></v>", b"<v>neurology</v>", 1)
                assert b"<v>neurology</v>" in data
            zout.writestr(item, data)
    path.write_bytes(out.getvalue())
    return path


@pytest.fixture
def letter_rows(default_ds) -> list[dict]:
    """40 real letters, 8 per label; the second one an neurology letter (its label cell becomes the formula)."""
    per, rows = Counter(), []
    neuro = next(t for t, lab in zip(default_ds.texts, default_ds.labels) if lab == "neurology")
    rows.append(
        {
            "letter": next(t for t, lab in zip(default_ds.texts, default_ds.labels) if lab == "cardiovascular-pulmonary"),
            "specialty": "cardiovascular-pulmonary",
        }
    )
    rows.append({"letter": neuro, "specialty": "(formula)"})
    per.update(["cardiovascular-pulmonary", "neurology"])
    for t, lab in zip(default_ds.texts, default_ds.labels):
        if per[lab] < 8 and t not in (rows[0]["letter"], neuro):
            per[lab] += 1
            rows.append({"letter": t, "specialty": lab})
    return rows


def test_a_workbook_reads_its_first_or_chosen_sheet_with_formula_values(tmp_path, letter_rows):
    path = workbook(tmp_path / "letters.xlsx", letter_rows)
    assert tables.sheet_names(path) == ["notes", "letters"]
    assert list(tables.read_table(path).columns) == ["exported from the clinic's letters database"]  # the first sheet by default
    df = tables.read_table(path, "letters")
    assert list(df.columns) == ["letter", "specialty", "age"] and len(df) == 40
    assert df["specialty"][1] == "neurology" and df["age"][0] == "40"  # the formula's saved value; numbers as written
    ds = dataset.load_dataset(path, "letter", "specialty", sheet="letters")
    assert len(ds) == 40 and Counter(ds.labels)["neurology"] == 8 and ds.options == {"sheet": "letters"}
    with pytest.raises(DataError, match=r"no sheet 'letter'\. Did you mean 'letters'\? Its sheets: 'notes', 'letters'"):
        tables.read_table(path, "letter")


def test_a_formula_without_a_saved_value_is_named_by_cell(tmp_path, letter_rows):
    path = workbook(tmp_path / "written.xlsx", letter_rows, saved_values=False)
    with pytest.raises(DataError, match=r"formula cell\(s\) hold no saved value \(B3\).*Open it in Excel or LibreOffice and save it"):
        tables.read_table(path, "letters")


def test_a_file_that_is_not_what_its_name_says_is_named_for_what_it_is(tmp_path, letter_rows):
    renamed = tmp_path / "letters.csv"
    renamed.write_bytes(workbook(tmp_path / "w.xlsx", letter_rows).read_bytes())
    with pytest.raises(DataError, match=r"letters.csv is an Excel workbook \(.xlsx\), not text.*Rename it to .xlsx") as err:
        tables.read_table(renamed)
    assert "UTF-8: byte" not in str(err.value)
    text = tmp_path / "text.xlsx"
    text.write_text("letter,specialty\nchest pain,cardiology\n")
    with pytest.raises(DataError, match=r"text.xlsx is not an Excel workbook: it is text \(it starts 'letter,specialty'\)"):
        tables.read_table(text)
    old = tmp_path / "old.xlsx"
    old.write_bytes(b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1" + b"\0" * 600)
    with pytest.raises(DataError, match=r"old-format Microsoft Office file.*save it as .xlsx"):
        tables.read_table(old)
    with pytest.raises(DataError, match=r"not an Excel workbook: leave the sheet out"):
        tables.read_table(write_text(tmp_path / "a.csv", "text,label\na,b\n"), "letters")


def test_a_workbook_that_expands_past_the_limit_is_refused_before_it_is_read(tmp_path, letter_rows, monkeypatch):
    path = workbook(tmp_path / "letters.xlsx", letter_rows)
    with zipfile.ZipFile(path, "a", zipfile.ZIP_DEFLATED) as zf:  # 3 MB of zeros: a few kB on disk
        zf.writestr("xl/media/padding.bin", b"\0" * 3 * 2**20)
    assert path.stat().st_size < 2**20
    assert len(tables.read_table(path, "letters")) == 40  # under 10x the default limit: read
    monkeypatch.setenv(tables.MAX_FILE_MB_ENV, "0.2")  # 2 MB of expanded parts allowed
    monkeypatch.setattr(tables, "_workbook", lambda *a, **k: pytest.fail("the workbook was opened"))
    with pytest.raises(DataError, match=r"letters.xlsx expands to 3 MB when opened, over the 2 MB.*CLINBENCH_MAX_DATA_MB"):
        tables.read_table(path, "letters")


def write_text(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def test_data_validate_and_evaluate_read_a_workbook(tmp_path, letter_rows, tiny_encoder):
    path = workbook(tmp_path / "letters.xlsx", letter_rows)
    out = cli("data", "validate", str(path), "--sheet", "letters", "--text-column", "letter", "--label-column", "specialty", "--json")
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout)
    assert report["n_rows"] == 40 and report["class_counts"]["neurology"] == 8, report
    metrics = tmp_path / "m.json"
    args = ("--sheet", "letters", "--text-column", "letter", "--label-column", "specialty", "--model", str(tiny_encoder))
    out = cli(
        "evaluate",
        "--data",
        str(path),
        *args,
        "--method",
        "logreg",
        "--max-length",
        "32",
        "--no-grid",
        "--n-boot",
        "100",
        "--cv-folds",
        "2",
        "--json",
        str(metrics),
    )
    assert out.returncode == 0, out.stderr
    assert json.loads(metrics.read_text())["n_letters"] == 40


def test_column_guess_never_proposes_a_list_or_numeric_column_as_the_text():
    hallmarks = pd.DataFrame(
        {
            "sentences": [["a long first sentence of the abstract", "and a long second one"]] * 3,
            "text": ["abstract one", "abstract two", "abstract three"],
            "labels": [["a"], ["b"], ["a", "b"]],
        }
    )
    assert tables.guess_columns(hallmarks) == ("text", "labels")
    numbers = pd.DataFrame({"record": ["123456789012345", "223456789012345", "323456789012345"], "note": ["pain", "rash", "cough"]})
    assert tables.guess_columns(numbers)[0] == "note"
    assert tables.guess_columns(pd.DataFrame({"only": ["1", "2"]})) == ("only", "only")  # nothing else to propose


def test_data_page_reads_a_workbook_sheet_and_keeps_saved_datasets_after_a_read_error(cache, tmp_path, letter_rows):
    path = workbook(tmp_path / "clinic.xlsx", letter_rows)
    at = page("1_Data.py").run()
    at.file_uploader(key="upload").upload("clinic.xlsx", path.read_bytes(), "application/vnd.ms-excel").run()
    assert not at.exception, at.exception
    at.selectbox(key="sheet").set_value("letters").run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    assert [at.selectbox[1].value, at.selectbox[2].value] == ["letter", "specialty"]
    assert any("40 rows, 5 labels: ready to use" in s.value for s in at.success)
    next(b for b in at.button if b.label == "Save dataset").click().run()
    assert not at.exception, at.exception
    assert any("Saved 'clinic' (40 letters)" in s.value for s in at.success) and at.session_state["saved-dataset"]
    assert any("Compare models on these letters" in m.value for m in at.markdown)  # a link under the app's navigation
    renamed = workbook(tmp_path / "w.xlsx", letter_rows).read_bytes()
    at.file_uploader(key="upload").upload("renamed.csv", renamed, "text/csv").run()
    shown = " ".join(e.value for e in at.error)
    assert "renamed.csv is an Excel workbook (.xlsx), not text" in shown
    assert not any(len(w) == 16 and all(ch in "0123456789abcdef" for ch in w) for w in shown.replace("-", " ").split())
    saved = next(d.value for d in at.dataframe if "letters" in d.value.columns and "read with" in d.value.columns)
    assert list(saved["name"]) == ["clinic"] and saved["read with"][0] == "sheet: letters"
