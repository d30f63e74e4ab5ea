"""Reading a letters file into a table: size limit, encoding (UTF-8, byte-order marks, UTF-16), ragged CSV rows,
JSONL records; and guessing which columns hold the text and the label.

Every problem with the file itself is a DataError that says what was wrong, where (line, byte offset) and how to
fix it; what the rows contain is engine.data's business.
"""

from __future__ import annotations

import csv
import io
import json
import os
from pathlib import Path

import pandas as pd

from engine.errors import DataError

MAX_FILE_MB_ENV = "CLINBENCH_MAX_DATA_MB"
DEFAULT_MAX_FILE_MB = 200
SUFFIXES = {".csv": "csv", ".tsv": "tsv", ".jsonl": "jsonl", ".ndjson": "jsonl"}
BOMS = ((b"\xef\xbb\xbf", "utf-8-sig", "UTF-8"), (b"\xff\xfe", "utf-16", "UTF-16"), (b"\xfe\xff", "utf-16", "UTF-16"))
TO_UTF8 = (
    "Re-save it as UTF-8: in Excel, File > Save As > 'CSV UTF-8 (Comma delimited)'; in LibreOffice, File > Save As > "
    "Text CSV with character set 'Unicode (UTF-8)'; or on the command line `iconv -f latin1 -t utf-8 IN.csv > OUT.csv` "
    "(`-f cp1252` for a file from Windows)."
)
LABEL_HINTS = ("label", "labels", "specialty", "class", "category", "target", "diagnosis", "y")


def max_file_mb() -> float:
    return float(os.environ.get(MAX_FILE_MB_ENV, DEFAULT_MAX_FILE_MB))


def read_table(path: str | Path) -> pd.DataFrame:
    """Read a CSV/TSV/JSONL file into a DataFrame of strings (and lists for JSON label lists).

    Raises DataError for problems with the file itself: missing, too large, unknown format, an encoding
    other than UTF-8 or UTF-16 with a byte-order mark, ragged CSV rows, or unparsable.
    """
    path = Path(path)
    if not path.exists():
        raise DataError(f"File not found: {path}. Check the path, or upload the file again.")
    if path.is_dir():
        raise DataError(f"{path} is a folder; give the path of a .csv, .tsv or .jsonl file.")
    kind = SUFFIXES.get(path.suffix.lower())
    if kind is None:
        raise DataError(
            f"{path.name}: unsupported file type {path.suffix or '(none)'!r}. Save the table as .csv, .tsv or .jsonl (one JSON object per line)."
        )
    size, limit_mb = path.stat().st_size, max_file_mb()
    if size > limit_mb * 2**20:
        raise DataError(
            f"{path.name} is {size / 2**20:.2g} MB, over the {limit_mb:g} MB limit. Split it into smaller files, "
            f"or raise the limit with the environment variable {MAX_FILE_MB_ENV}."
        )
    raw = path.read_bytes()
    if size == 0:
        raise DataError(f"{path.name} is empty. Export the table again with a header row and one letter per row.")
    text = decode(raw, path.name)
    if kind == "jsonl":
        return _read_jsonl(text, path.name)
    sep = "\t" if kind == "tsv" else ","
    _refuse_unclosed_quote(text, sep, path.name)
    _refuse_ragged(text, sep, path.name)
    try:
        return pd.read_csv(io.StringIO(text), sep=sep, dtype=str, keep_default_na=False, na_values=[], index_col=False)
    except (pd.errors.ParserError, ValueError) as exc:
        raise DataError(
            f"{path.name} could not be parsed as {kind.upper()}: {exc}. Check the quoting of fields that contain commas or line breaks."
        ) from None


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


def guess_columns(df: pd.DataFrame) -> tuple[str, str]:
    """(text column, label column): the longest free text on average, and the column with the fewest distinct values
    relative to its rows among the others (at least 2; a usual label name, such as 'label' or 'specialty', first)."""
    columns = [str(c) for c in df.columns]
    if not columns:
        raise DataError("The table has no columns. Export it again with a header row.")
    cells = {
        c: df[col].map(lambda v: "" if v is None or v != v else str(v) if not isinstance(v, str) else v)
        for c, col in zip(columns, df.columns)
    }
    text = max(columns, key=lambda c: (cells[c].str.len().mean() if len(df) else 0.0, -columns.index(c)))
    best = None
    for i, c in enumerate(columns):
        if c == text:
            continue
        distinct = cells[c].str.strip().replace("", None).dropna().nunique()
        score = (distinct < 2, c.lower() not in LABEL_HINTS, distinct / max(len(df), 1), i)
        best = min(best, (score, c)) if best else (score, c)
    return text, best[1] if best else text
