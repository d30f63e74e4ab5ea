"""Reading a letters file into a table: size limit, encoding (UTF-8, byte-order marks, UTF-16), ragged CSV rows,
JSONL records, .json files, Excel workbooks; and guessing which columns hold the text and the label.

An .xlsx workbook (openpyxl) is read from its first sheet, or the sheet named by the data option `sheet`; its first row
is the header, formulas are read as the values the spreadsheet program saved with them, and a formula saved without a
value (a workbook written by a program that does not calculate) is named by cell. A file whose bytes are not what its
name says (a workbook renamed .csv, a CSV renamed .xlsx, a PDF) gets an error naming what it is.

A .json file is read by its content: an object of objects keyed by id (e.g. PubMedQA's `{PMID: {QUESTION, ...}}`)
becomes one row per key with the key in an `id` column (`key` when the records hold an `id` of their own); a list
of objects is one row per object; JSON lines in a .json file read as JSONL.

Letters built from several columns: `template_texts` fills a text template such as "Question: {QUESTION}\nContext:
{CONTEXTS}" per row (a list-valued cell is joined with newlines). A dataset's own split: `split_of` reads a column
holding `train`/`test` per row, or a file of test ids (`read_ids`: the keys of a JSON object, the items of a JSON
list, or one id per line) matched against the `id` column; every other row trains.

Every problem with the file itself is a DataError that says what was wrong, where (line, byte offset) and how to
fix it; what the rows contain is engine.data's business.
"""

from __future__ import annotations

import csv
import difflib
import io
import json
import os
import re
import string
import zipfile
from pathlib import Path

import pandas as pd

from engine.errors import DataError

MAX_FILE_MB_ENV = "CLINBENCH_MAX_DATA_MB"
DEFAULT_MAX_FILE_MB = 200
SUFFIXES = {".csv": "csv", ".tsv": "tsv", ".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "json", ".xlsx": "xlsx"}
FORMATS = ".csv, .tsv, .jsonl (one JSON object per line), .json or .xlsx (Excel)"
ID_COLUMN = "id"  # the column a JSON object's keys land in, and that test ids are matched against
SPLIT_VALUES = ("train", "test")
BOMS = ((b"\xef\xbb\xbf", "utf-8-sig", "UTF-8"), (b"\xff\xfe", "utf-16", "UTF-16"), (b"\xfe\xff", "utf-16", "UTF-16"))
TO_UTF8 = (
    "Re-save it as UTF-8: in Excel, File > Save As > 'CSV UTF-8 (Comma delimited)'; in LibreOffice, File > Save As > "
    "Text CSV with character set 'Unicode (UTF-8)'; or on the command line `iconv -f latin1 -t utf-8 IN.csv > OUT.csv` "
    "(`-f cp1252` for a file from Windows)."
)
LABEL_HINTS = ("label", "labels", "specialty", "class", "category", "target", "diagnosis", "y")


def max_file_mb() -> float:
    return float(os.environ.get(MAX_FILE_MB_ENV, DEFAULT_MAX_FILE_MB))


def check_size(name: str, size: int) -> None:
    """Refuse a letters file over the limit (CLINBENCH_MAX_DATA_MB) before it is read or stored."""
    limit_mb = max_file_mb()
    if size > limit_mb * 2**20:
        raise DataError(
            f"{name} is {size / 2**20:.2g} MB, over the {limit_mb:g} MB limit. Split it into smaller files, "
            f"or raise the limit with the environment variable {MAX_FILE_MB_ENV}."
        )


def shown_name(path: str | Path) -> str:
    """A file's name as its user knows it: an upload kept in the cache (engine.data.datasets: datasets/files/<sha16>-<name>)
    without its content-address prefix."""
    path = Path(path)
    if path.parent.name == "files" and path.parent.parent.name == "datasets":
        return re.sub(r"^[0-9a-f]{16}-", "", path.name)
    return path.name


def read_table(path: str | Path, sheet: str | None = None) -> pd.DataFrame:
    """Read a CSV/TSV/JSONL/JSON/XLSX file into a DataFrame of strings (and lists for JSON label lists); `sheet`: the
    workbook's sheet to read (default: the first).

    Raises DataError for problems with the file itself: missing, too large, unknown format, not what its name says, an
    encoding other than UTF-8 or UTF-16 with a byte-order mark, ragged CSV rows, or unparsable.
    """
    path = Path(path)
    name = shown_name(path)
    if not path.exists():
        raise DataError(f"File not found: {path}. Check the path, or upload the file again.")
    if path.is_dir():
        raise DataError(f"{path} is a folder; give the path of a {FORMATS} file.")
    kind = SUFFIXES.get(path.suffix.lower())
    if kind is None:
        old = " An old-format .xls workbook: open it in Excel or LibreOffice and save it as .xlsx." if path.suffix.lower() == ".xls" else ""
        raise DataError(f"{name}: unsupported file type {path.suffix or '(none)'!r}. Save the table as {FORMATS}.{old}")
    size = path.stat().st_size
    check_size(name, size)
    if size == 0:
        raise DataError(f"{name} is empty. Export the table again with a header row and one letter per row.")
    if sheet and kind != "xlsx":
        raise DataError(f"A sheet ({sheet!r}) was given for {name}, which is not an Excel workbook: leave the sheet out.")
    if kind == "xlsx":
        return _read_xlsx(path, name, sheet)
    text = decode(path.read_bytes(), name)
    if kind == "jsonl":
        return _read_jsonl(text, name)
    if kind == "json":
        return _read_json(text, name)
    sep = "\t" if kind == "tsv" else ","
    _refuse_unclosed_quote(text, sep, name)
    _refuse_ragged(text, sep, name)
    try:
        return pd.read_csv(io.StringIO(text), sep=sep, dtype=str, keep_default_na=False, na_values=[], index_col=False)
    except (pd.errors.ParserError, ValueError) as exc:
        raise DataError(
            f"{name} could not be parsed as {kind.upper()}: {exc}. Check the quoting of fields that contain commas or line breaks."
        ) from None


def sheet_names(path: str | Path) -> list[str] | None:
    """The sheets of an .xlsx workbook, in order (None for a file of another kind); DataError when it is no workbook."""
    path = Path(path)
    if SUFFIXES.get(path.suffix.lower()) != "xlsx":
        return None
    return _workbook(path, shown_name(path), data_only=True).sheetnames


def binary_kind(raw: bytes) -> str | None:
    """What a file whose bytes are not text is, from its first bytes (None: no known binary format)."""
    if raw.startswith(b"PK\x03\x04"):
        try:
            names = set(zipfile.ZipFile(io.BytesIO(raw)).namelist())
        except zipfile.BadZipFile:
            return "a ZIP archive"
        if "xl/workbook.xml" in names:
            return "an Excel workbook (.xlsx)"
        if "word/document.xml" in names:
            return "a Word document (.docx)"
        return "an OpenDocument file" if "content.xml" in names else "a ZIP archive"
    for magic, what in (
        (b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1", "an old-format Microsoft Office file (.xls or .doc)"),
        (b"%PDF", "a PDF document"),
        (b"\x1f\x8b", "a gzip-compressed file"),
    ):
        if raw.startswith(magic):
            return what
    return None


def _not_text(name: str, what: str) -> DataError:
    if what.startswith("an Excel workbook"):
        how = "Rename it to .xlsx (ClinBench reads a workbook's first sheet, or the sheet you choose)"
    elif what.startswith("an old-format"):
        how = "Open it in Excel or LibreOffice and save it as .xlsx"
    else:
        how = "Export the letters from it as a table"
    return DataError(f"{name} is {what}, not text, so it cannot be read as its name says. {how}, or save it as 'CSV UTF-8'.")


XLSX_EXPANSION = 10  # a workbook's XML may expand to this many times the file size limit (text compresses about 5-10x)


def _check_expanded(path: Path, name: str) -> None:
    """Refuse a workbook whose parts expand past XLSX_EXPANSION x the size limit (a zip bomb) before any part is read."""
    try:
        with zipfile.ZipFile(path) as zf:
            expanded = sum(info.file_size for info in zf.infolist())
    except (zipfile.BadZipFile, OSError):
        return  # not a zip: _workbook names what it is
    limit_mb = max_file_mb() * XLSX_EXPANSION
    if expanded > limit_mb * 2**20:
        raise DataError(
            f"{name} expands to {expanded / 2**20:,.0f} MB when opened, over the {limit_mb:g} MB a workbook may expand to "
            f"({XLSX_EXPANSION}x the {max_file_mb():g} MB file limit). Split the letters over smaller workbooks, save them as "
            f"CSV, or raise the limit with the environment variable {MAX_FILE_MB_ENV}."
        )


def _workbook(path: Path, name: str, *, data_only: bool):
    import openpyxl
    from openpyxl.utils.exceptions import InvalidFileException

    try:
        return openpyxl.load_workbook(path, read_only=True, data_only=data_only)
    except (zipfile.BadZipFile, InvalidFileException, KeyError, OSError) as exc:
        raw = path.read_bytes()
        what = binary_kind(raw)
        if what is None:
            head = raw[:40].decode("utf-8", errors="replace").splitlines()[0] if raw[:40].strip() else ""
            what = f"text (it starts {head!r})" if head.isprintable() and head else "neither a workbook nor text"
            how = "Rename it after what it holds (.csv, .tsv, .jsonl or .json)" if head else "Export the letters again from Excel as .xlsx"
        elif what.startswith("an Excel workbook"):
            raise DataError(
                f"{name} is an Excel workbook that cannot be opened ({exc}): it is damaged. Save it again from Excel."
            ) from None
        else:
            how = (
                "Open it in Excel or LibreOffice and save it as .xlsx"
                if what.startswith("an old-format")
                else "Export the letters as .xlsx"
            )
        raise DataError(f"{name} is not an Excel workbook: it is {what}. {how}.") from None


def _cell_text(value) -> str:
    if value is None:
        return ""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def _read_xlsx(path: Path, name: str, sheet: str | None) -> pd.DataFrame:
    """One sheet of a workbook (default: the first): its first non-empty row the header, every cell as text, formulas as their saved values."""
    _check_expanded(path, name)
    values = _workbook(path, name, data_only=True)
    sheets = values.sheetnames
    chosen = sheet or sheets[0]
    if chosen not in sheets:
        close = difflib.get_close_matches(str(sheet), sheets, n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise DataError(f"{name} has no sheet {sheet!r}.{hint} Its sheets: {', '.join(map(repr, sheets))}.")
    grid = list(values[chosen].iter_rows(values_only=True))
    values.close()
    rows = [r for r in grid if any(v is not None and str(v).strip() for v in r)]
    if not rows:
        raise DataError(f"Sheet {chosen!r} of {name} is empty. Put a header row and one letter per row in it, or choose another sheet.")
    formulas = _workbook(path, name, data_only=False)
    unsaved = [  # the same XML rows read as written (formulas) beside the values saved with them (grid)
        f.coordinate
        for frow, vrow in zip(formulas[chosen].iter_rows(), grid)
        for f, v in zip(frow, vrow)
        if getattr(f, "data_type", None) == "f" and v is None
    ]
    formulas.close()
    if unsaved:
        shown = ", ".join(unsaved[:8]) + (f" and {len(unsaved) - 8} more" if len(unsaved) > 8 else "")
        raise DataError(
            f"Sheet {chosen!r} of {name}: {len(unsaved)} formula cell(s) hold no saved value ({shown}), so their values are unknown "
            "(the workbook was written by a program that does not calculate). Open it in Excel or LibreOffice and save it, "
            "or replace the formulas by their values."
        )
    width = max(len(r) for r in rows)
    header = [_cell_text(v).strip() for v in rows[0]] + [""] * (width - len(rows[0]))
    body = [[_cell_text(v) for v in r] + [""] * (width - len(r)) for r in rows[1:]]
    keep = [i for i in range(width) if header[i] or any(r[i].strip() for r in body)]
    from openpyxl.utils import get_column_letter

    columns = [header[i] or f"column {get_column_letter(i + 1)}" for i in keep]
    if len(set(columns)) < len(columns):
        twice = sorted({c for c in columns if columns.count(c) > 1})
        raise DataError(f"Sheet {chosen!r} of {name} has two columns named {twice[0]!r}: give every column its own name in the header row.")
    return pd.DataFrame([[r[i] for i in keep] for r in body], columns=columns, dtype=object)


def decode(raw: bytes, name: str) -> str:
    """The text of a file: UTF-8 (with or without a byte-order mark) or UTF-16 with one; else a DataError saying how to convert."""
    for bom, codec, label in BOMS:
        if raw.startswith(bom):
            try:
                return raw.decode(codec)
            except UnicodeDecodeError as exc:
                raise DataError(
                    f"{name} starts with a {label} byte-order mark but byte offset {exc.start} cannot be decoded as {label}. "
                    f"The file is damaged or mixes encodings. {TO_UTF8}"
                ) from None
    what = binary_kind(raw)
    if what is not None:
        raise _not_text(name, what)
    head = raw[:4096]
    if head.count(0) > len(head) // 4:
        raise DataError(
            f"{name} looks like UTF-16 without a byte-order mark ({head.count(0)} NUL bytes in its first {len(head)} bytes), "
            f"so its encoding cannot be told for sure. {TO_UTF8.split('; or on')[0]}; or `iconv -f utf-16le -t utf-8 IN.csv > OUT.csv`."
        )
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise DataError(
            f"{name} is not UTF-8: byte 0x{raw[exc.start]:02x} at line {line} (byte offset {exc.start}) cannot be decoded. {TO_UTF8}"
        ) from None


def _refuse_unclosed_quote(text: str, sep: str, name: str) -> None:
    """A DataError naming the line where a quoted field opens and never closes (the rest of the file would be one field)."""
    if text.count('"') % 2 == 0:  # a closed quoted field holds an even number of quotes: only an odd count is suspect
        return
    csv.field_size_limit(2**31 - 1)
    reader, start = csv.reader(io.StringIO(text), delimiter=sep, strict=True), 1
    try:
        for _ in reader:
            start = reader.line_num + 1
    except csv.Error as exc:
        if "unexpected end of data" in str(exc):
            raise DataError(
                f'{name}: a quoted field in the row that starts at line {start} is never closed (no closing "), so the rest of '
                'the file would read as one field. Close the quote, write a quote inside a field as two (""), or export the '
                "table again from your spreadsheet."
            ) from None


def _refuse_ragged(text: str, sep: str, name: str) -> None:
    """A DataError naming every row (by line) whose number of fields differs from the header's."""
    csv.field_size_limit(2**31 - 1)
    reader = csv.reader(io.StringIO(text), delimiter=sep)
    header, ragged, start = None, [], 1
    try:
        for fields in reader:
            if fields and header is None:
                header = fields
            elif fields and len(fields) != len(header):
                ragged.append((start, len(fields)))
            start = reader.line_num + 1
    except csv.Error:
        return  # pandas names the quoting problem
    if not ragged:
        return
    n, by_count = len(header), {}
    for line, k in ragged:
        by_count.setdefault(k, []).append(line)
    shown = "; ".join(
        f"line{'s' if len(ls) > 1 else ''} {', '.join(map(str, ls[:8]))}{f' and {len(ls) - 8} more' if len(ls) > 8 else ''} "
        f"{'have' if len(ls) > 1 else 'has'} {k} field{'s' if k != 1 else ''}"
        for k, ls in sorted(by_count.items())
    )
    raise DataError(
        f"{name} has {len(ragged)} ragged row(s), with more or fewer fields than the {n} in the header "
        f"({', '.join(header)}): {shown}. Read as it is, values would land in the wrong columns. "
        f"A {'tab' if sep == chr(9) else 'comma'} inside an unquoted field usually causes this: quote such fields "
        '("a, b"), or export the table again from your spreadsheet; add a header name for every column.'
    )


def _read_jsonl(text: str, name: str) -> pd.DataFrame:
    records = []
    for i, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except ValueError as exc:
            raise DataError(
                f"{name}, line {i}: not valid JSON ({exc.msg} at column {exc.colno}). Each line must be one JSON object."
            ) from None
        if not isinstance(obj, dict):
            raise DataError(f'{name}, line {i}: expected a JSON object like {{"text": ..., "label": ...}}, found {type(obj).__name__}.')
        records.append(obj)
    if not records:
        raise DataError(f"{name} holds no JSON records. Each line must be one JSON object.")
    return pd.DataFrame.from_records(records)


def _read_json(text: str, name: str) -> pd.DataFrame:
    """A .json file: an object of objects keyed by id, a list of objects, or JSON lines."""
    try:
        top = json.loads(text)
    except ValueError as exc:
        if exc.msg == "Extra data":  # several JSON values: JSON lines
            return _read_jsonl(text, name)
        raise DataError(f"{name} is not valid JSON ({exc.msg} at line {exc.lineno}, column {exc.colno}).") from None
    if isinstance(top, list) and top and all(isinstance(r, dict) for r in top):
        return pd.DataFrame.from_records(top)
    if isinstance(top, dict) and top and all(isinstance(r, dict) for r in top.values()):
        key = "key" if any(ID_COLUMN in r for r in top.values()) else ID_COLUMN
        return pd.DataFrame.from_records([{key: str(k), **r} for k, r in top.items()])
    raise DataError(
        f'{name}: expected an object of records keyed by id ({{"id1": {{"text": ..., "label": ...}}, ...}}) or a list of '
        f'records ([{{"text": ..., "label": ...}}, ...]); found {type(top).__name__ if top else "an empty value"}.'
    )


def template_fields(template: str) -> list[str]:
    """The column names a text template uses ("{QUESTION} {CONTEXTS}" -> [QUESTION, CONTEXTS]); DataError when malformed."""
    try:
        fields = [f for _, f, _, _ in string.Formatter().parse(template) if f is not None]
    except ValueError as exc:
        raise DataError(
            f"The text template {template!r} is malformed ({exc}): write a column as {{name}}, a literal brace as {{{{ or }}}}."
        ) from None
    if not fields or "" in fields:
        raise DataError(
            f'The text template {template!r} must name columns in braces, e.g. "Question: {{question}}\\nContext: {{contexts}}".'
        )
    return list(dict.fromkeys(fields))


def is_template(text: str) -> bool:
    try:
        return bool(template_fields(text))
    except DataError:
        return False


def cell_text(value) -> str:
    if isinstance(value, (list, tuple)):
        return "\n".join(t for t in (cell_text(v) for v in value) if t.strip())
    return "" if value is None or value != value else str(value)  # (NaN != NaN)


def template_texts(df: pd.DataFrame, template: str, name: str) -> list[str]:
    """Each row's letter: the template with each {column} replaced by the row's value (lists joined with newlines); an empty
    text when every named cell is empty. DataError naming the columns present when the template names a missing one."""
    fields, columns = template_fields(template), [str(c) for c in df.columns]
    missing = [f for f in fields if f not in columns]
    if missing:
        raise DataError(
            f"The text template names {len(missing)} column(s) not in {name}: {', '.join(map(repr, missing))}. Columns present: "
            f"{', '.join(columns) or '(none)'}."
        )
    parts = list(string.Formatter().parse(template))
    out = []
    for rec in df[fields].to_dict("records"):
        values = {f: cell_text(rec[f]) for f in fields}
        out.append(
            "".join(lit + (values[f] if f is not None else "") for lit, f, _, _ in parts) if any(v.strip() for v in values.values()) else ""
        )
    return out


def read_ids(path: str | Path) -> set[str]:
    """The ids a file lists: a JSON object's keys, a JSON list's items, or one id per line."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"Test ids file not found: {path}. Give a JSON object keyed by id, a JSON list, or a file with one id per line.")
    text = decode(path.read_bytes(), path.name)
    if path.suffix.lower() == ".json":
        try:
            obj = json.loads(text)
        except ValueError as exc:
            raise DataError(f"{path.name} is not valid JSON ({exc.msg} at line {exc.lineno}).") from None
        if not isinstance(obj, (dict, list)):
            raise DataError(f"{path.name}: expected a JSON object keyed by id or a list of ids, found {type(obj).__name__}.")
        items = list(obj)
    else:
        items = text.splitlines()
    ids = {str(i).strip() for i in items if str(i).strip()}
    if not ids:
        raise DataError(f"{path.name} lists no ids.")
    return ids


def split_of(df: pd.DataFrame, split_column: str | None, test_ids: str | Path | None, name: str) -> list[str] | None:
    """'train' or 'test' per row (None without a split): from `split_column`, or from the file `test_ids` matched against
    the `id` column (every other row trains). DataError naming the rows whose value is neither."""
    columns = [str(c) for c in df.columns]
    if split_column and test_ids:
        raise DataError("Give the split as split_column or as test_ids, not both.")
    needed = split_column or (ID_COLUMN if test_ids else None)
    if needed and needed not in columns:
        raise DataError(
            f"{'Split' if split_column else 'Id'} column {needed!r} not found in {name}. Columns present: {', '.join(columns)}."
        )
    if split_column:
        values = [cell_text(v).strip().lower() for v in df[split_column].tolist()]
        bad = [(n, v) for n, v in enumerate(df[split_column].tolist(), start=1) if values[n - 1] not in SPLIT_VALUES]
        if bad:
            shown = ", ".join(f"{n} ({v!r})" for n, v in bad[:8]) + (f" and {len(bad) - 8} more" if len(bad) > 8 else "")
            raise DataError(
                f"Split column {split_column!r} must hold 'train' or 'test' in every row of {name}; {len(bad)} row(s) hold something "
                f"else: rows {shown} (counted from 1 after the header). Mark validation rows 'train' (fine-tuning carves its "
                "validation letters from the training rows), or delete the rows."
            )
        return values
    if not test_ids:
        return None
    ids, have = read_ids(test_ids), [cell_text(v).strip() for v in df[ID_COLUMN].tolist()]
    unknown = sorted(ids - set(have))
    if unknown:
        raise DataError(
            f"{len(unknown)} of the {len(ids)} test ids in {Path(test_ids).name} are not in the {ID_COLUMN!r} column of {name}: "
            f"{', '.join(unknown[:8])}{' and more' if len(unknown) > 8 else ''}. Check that the ids file belongs to this dataset."
        )
    return ["test" if h in ids else "train" for h in have]


def guess_columns(df: pd.DataFrame) -> tuple[str, str]:
    """(text column, label column): the longest free text on average, and the column with the fewest distinct values
    relative to its rows among the others (at least 2; a usual label name, such as 'label' or 'specialty', first).
    A column of lists (JSON `sentences: [...]`, `labels: [...]`) or of numbers is never proposed as the text while
    another column is left."""
    columns = [str(c) for c in df.columns]
    if not columns:
        raise DataError("The table has no columns. Export it again with a header row.")
    cells = {
        c: df[col].map(lambda v: "" if v is None or v != v else str(v) if not isinstance(v, str) else v)
        for c, col in zip(columns, df.columns)
    }
    free = [c for c, col in zip(columns, df.columns) if not _holds_lists(df[col]) and not _numeric(cells[c])] or columns
    text = max(free, key=lambda c: (cells[c].str.len().mean() if len(df) else 0.0, -columns.index(c)))
    best = None
    for i, c in enumerate(columns):
        if c == text:
            continue
        distinct = cells[c].str.strip().replace("", None).dropna().nunique()
        score = (distinct < 2, c.lower() not in LABEL_HINTS, distinct / max(len(df), 1), i)
        best = min(best, (score, c)) if best else (score, c)
    return text, best[1] if best else text


def _holds_lists(column: pd.Series) -> bool:
    return bool(column.map(lambda v: isinstance(v, (list, tuple, dict))).any())


def _numeric(cells: pd.Series) -> bool:
    """Every non-blank cell is a number (ids, ages, scores): not free text."""
    filled = cells.str.strip().replace("", None).dropna()
    return bool(len(filled)) and bool(pd.to_numeric(filled, errors="coerce").notna().all())


def letters_table(path, text_column: str, label_column: str, options: dict) -> tuple[pd.DataFrame, str, list[str] | None, dict]:
    """The table of a letters file under the data options (engine.data's docstring): (table, text column, split per row,
    kept columns). A text template adds its letters as a column named by the template;
    its columns, the answer column and the subgroup column are kept (text per row). With `label_columns` (a list) those are the label columns."""
    options = {k: v for k, v in options.items() if v is not None}
    df, name = read_table(path, options.get("sheet")), shown_name(path)
    present, label_columns = [str(c) for c in df.columns], list(options.get("label_columns") or [label_column])
    template = options.get("text_template") or (text_column if text_column not in df and is_template(text_column) else None)
    kept: list[str] = []
    if template:
        kept = template_fields(template)
        if used := [c for c in label_columns if c in kept]:
            raise DataError(f"The text template uses the label column {used[0]!r}: every letter would carry its own answer.")
        df = df.copy()
        df[template] = template_texts(df, template, name)
        text_column = template
    answer = options.get("answer_column")
    if answer is not None:
        _require_column(df, answer, "answer", name, present)
        if answer in (*label_columns, text_column) or answer in kept:
            raise DataError(f"The answer column {answer!r} is also the letter or the label: name a column that only holds answers.")
        kept.append(answer)
    subgroup = options.get("subgroup_column")
    if subgroup is not None:
        _require_column(df, subgroup, "subgroup", name, present)
        if subgroup in (*label_columns, text_column, answer):
            raise DataError(f"The subgroup column {subgroup!r} is also the letter, the label or the answer: name a column of subgroups.")
        if subgroup not in kept:
            kept.append(subgroup)
    columns = {c: [cell_text(v) for v in df[c].tolist()] for c in kept}
    return df, text_column, split_of(df, options.get("split_column"), options.get("test_ids"), name), columns


def _require_column(df, column: str, role: str, name: str, present: list[str]) -> None:
    """Refuse a file without the `role` column (answer, subgroup) it was asked for, suggesting the closest name."""
    if column not in df.columns:
        close = difflib.get_close_matches(str(column), present, n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise DataError(f"The {role} column {column!r} is not in {name}.{hint} Columns present: {', '.join(present)}.")
