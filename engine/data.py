"""Labelled letters: loading CSV/JSONL and the validation report (splits are engine.protocols').

A dataset is a table with one letter per row; the user names the text column and the
label column. A label cell holds one label, or several (multi-label) given as a JSON
list in JSONL or as a string split on `label_sep` (e.g. "|") in CSV.

`validate_table` never raises for content problems: it returns a report of every
issue found (errors block use, warnings do not). `load_dataset` raises a DataError
that lists all errors at once, so a user fixes the file in one pass.
"""

from __future__ import annotations

import difflib
import json
import os
from collections import Counter
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import pandas as pd

from engine import duplicates
from engine.config import DEFAULT_DATASET
from engine.errors import ClinBenchError, DataError
from engine.options import ProtocolOptions
from engine.storage import sha256_json, sha256_texts

MAX_FILE_MB_ENV = "CLINBENCH_MAX_DATA_MB"
DEFAULT_MAX_FILE_MB = 200
SUFFIXES = {".csv": "csv", ".tsv": "tsv", ".jsonl": "jsonl", ".ndjson": "jsonl"}
DEFAULT_NAME = "default"
DEFAULT_COLUMNS = ("text", "label")


@dataclass
class Issue:
    level: str  # "error" or "warning"
    code: str  # stable identifier, e.g. "missing_column"
    message: str  # what was wrong, where, and how to fix it

    def __str__(self) -> str:
        return f"{self.level}: {self.message}"


@dataclass
class ValidationReport:
    path: str
    n_rows: int = 0
    columns: list[str] = field(default_factory=list)
    class_counts: dict[str, int] = field(default_factory=dict)
    multi_label: bool = False
    issues: list[Issue] = field(default_factory=list)
    duplicates: dict | None = None  # engine.duplicates.summary of the usable rows (exact duplicates and conflicts)
    usable_rows: list[int] = field(default_factory=list, repr=False)  # data row (1-based) of each usable letter

    @property
    def errors(self) -> list[Issue]:
        return [i for i in self.issues if i.level == "error"]

    @property
    def warnings(self) -> list[Issue]:
        return [i for i in self.issues if i.level == "warning"]

    @property
    def ok(self) -> bool:
        return not self.errors

    def error(self, code: str, message: str) -> None:
        self.issues.append(Issue("error", code, message))

    def warn(self, code: str, message: str) -> None:
        self.issues.append(Issue("warning", code, message))

    def to_dict(self) -> dict:
        return {
            "path": self.path,
            "ok": self.ok,
            "n_rows": self.n_rows,
            "columns": self.columns,
            "class_counts": self.class_counts,
            "multi_label": self.multi_label,
            "issues": [vars(i) for i in self.issues],
            "duplicates": self.duplicates,
        }

    def raise_for_errors(self) -> None:
        if self.errors:
            lines = "\n".join(f"  - {e.message}" for e in self.errors)
            raise DataError(f"{self.path} cannot be used ({len(self.errors)} problem(s)):\n{lines}")


@dataclass
class Dataset:
    texts: list[str]
    labels: list  # str per letter, or tuple[str, ...] per letter when multi_label
    source: str
    text_column: str
    label_column: str
    multi_label: bool = False
    report: ValidationReport | None = None
    rows: list[int] | None = None  # 0-based data rows of the input file, when letters were left out (None: all, in order)

    def __len__(self) -> int:
        return len(self.texts)

    def without(self, drop) -> Dataset:
        """A copy without the letters at the positions `drop` (their input rows are remembered in `rows`)."""
        gone = {int(i) for i in drop}
        keep = [i for i in range(len(self)) if i not in gone]
        rows = [self.rows[i] if self.rows is not None else i for i in keep]
        return replace(self, texts=[self.texts[i] for i in keep], labels=[self.labels[i] for i in keep], rows=rows)

    @property
    def classes(self) -> list[str]:
        if self.multi_label:
            return sorted({lab for labs in self.labels for lab in labs})
        return sorted(set(self.labels))

    @property
    def text_hash(self) -> str:
        """Hash of the letters alone: what embeddings depend on."""
        return sha256_texts(self.texts)

    @property
    def data_hash(self) -> str:
        """Hash of letters and labels: what a classifier depends on."""
        return sha256_json([self.text_hash, [list(lab) if self.multi_label else lab for lab in self.labels]])


# --- loading -----------------------------------------------------------------


def max_file_mb() -> float:
    return float(os.environ.get(MAX_FILE_MB_ENV, DEFAULT_MAX_FILE_MB))


def read_table(path: str | Path) -> pd.DataFrame:
    """Read a CSV/TSV/JSONL file into a DataFrame of strings (and lists for JSON label lists).

    Raises DataError for problems with the file itself: missing, too large, unknown
    format, not UTF-8, or unparsable.
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
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise DataError(
            f"{path.name} is not UTF-8: byte 0x{raw[exc.start]:02x} at line {line} (byte offset {exc.start}) cannot be decoded. "
            "Re-save the file as UTF-8 (in Excel: 'CSV UTF-8'; or `iconv -f latin1 -t utf-8`)."
        ) from None
    if kind == "jsonl":
        return _read_jsonl(text, path.name)
    import io

    try:
        return pd.read_csv(io.StringIO(text), sep="\t" if kind == "tsv" else ",", dtype=str, keep_default_na=False, na_values=[])
    except (pd.errors.ParserError, ValueError) as exc:
        raise DataError(
            f"{path.name} could not be parsed as {kind.upper()}: {exc}. Check the quoting of fields that contain commas or line breaks."
        ) from None


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


# --- validation --------------------------------------------------------------


def _row_list(rows: list[int], limit: int = 8) -> str:
    shown = ", ".join(str(r) for r in rows[:limit])
    return shown + (f" and {len(rows) - limit} more" if len(rows) > limit else "")


def _labels_text(labels: list) -> str:
    """The distinct labels of a group, e.g. 'a' vs 'b' (a multi-label letter's labels joined with +)."""
    distinct = dict.fromkeys("+".join(map(repr, lab)) if isinstance(lab, list) else repr(lab) for lab in labels)
    return " vs ".join(distinct)


def _is_blank(value) -> bool:
    if value is None:
        return True
    if isinstance(value, float) and np.isnan(value):
        return True
    if isinstance(value, str):
        return not value.strip() or value.strip().lower() in {"nan", "null", "none", "n/a"}
    return False


def _parse_labels(value, label_sep: str | None):
    """One label (str) or a tuple of labels; None when blank."""
    if isinstance(value, (list, tuple)):
        labs = tuple(sorted({str(v).strip() for v in value if not _is_blank(v)}))
        return labs
    if _is_blank(value):
        return None
    value = str(value).strip()
    if label_sep:
        return tuple(sorted({p.strip() for p in value.split(label_sep) if p.strip()}))
    return value


def validate_table(
    df: pd.DataFrame, text_column: str, label_column: str, *, path: str = "data", label_sep: str | None = None
) -> tuple[ValidationReport, list[str], list]:
    """Check a table for use as labelled letters. Returns (report, texts, labels) of the usable rows."""
    report = ValidationReport(path=path, n_rows=len(df), columns=[str(c) for c in df.columns])
    for role, col in (("text", text_column), ("label", label_column)):
        if col not in df.columns:
            close = difflib.get_close_matches(col, report.columns, n=1)
            hint = f" Did you mean {close[0]!r}?" if close else ""
            report.error(
                "missing_column",
                f"{role} column {col!r} not found in {path}. Columns present: {', '.join(report.columns) or '(none)'}.{hint}",
            )
    if report.errors:
        return report, [], []
    if len(df) == 0:
        report.error("no_rows", f"{path} has a header but no rows.")
        return report, [], []

    row_no = list(range(1, len(df) + 1))  # 1-based data rows (header not counted)
    texts, labels = [], []
    blank_text, blank_label = [], []
    for n, text, raw_label in zip(row_no, df[text_column].tolist(), df[label_column].tolist()):
        lab = _parse_labels(raw_label, label_sep)
        if _is_blank(text) or not isinstance(text, str):
            blank_text.append(n)
        if lab is None or lab == ():
            blank_label.append(n)
        texts.append(text.strip() if isinstance(text, str) else "")
        labels.append(lab)
    if blank_text:
        report.error(
            "empty_text",
            f"{len(blank_text)} row(s) have an empty or missing text in column {text_column!r}: rows {_row_list(blank_text)} "
            "(counted from 1 after the header). Fill in or delete these rows.",
        )
    if blank_label:
        report.error(
            "empty_label",
            f"{len(blank_label)} row(s) have no label in column {label_column!r}: rows {_row_list(blank_label)}. "
            "Label these letters or delete the rows.",
        )

    bad = set(blank_text) | set(blank_label)
    ok_rows = [i for i in range(len(texts)) if (i + 1) not in bad]
    multi = any(isinstance(labels[i], tuple) for i in ok_rows)
    report.multi_label = multi
    if multi:
        labels = [lab if isinstance(lab, tuple) else (lab,) if lab is not None else None for lab in labels]
    counts = Counter(x for i in ok_rows for x in (labels[i] if multi else [labels[i]]))
    report.class_counts = dict(sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))

    if len(counts) == 1:
        (only,) = counts
        report.error(
            "one_class",
            f"Only one label ({only!r}) occurs in column {label_column!r}; a classifier needs at least two. "
            "Check that you chose the right label column.",
        )
    elif len(counts) == 0 and not blank_label:
        report.error("no_labels", f"No usable labels in column {label_column!r}.")
    rare = sorted(lab for lab, c in counts.items() if c < 2)
    if rare and len(counts) > 1:
        where = []
        for lab in rare[:8]:
            r = next(i + 1 for i in ok_rows if (lab in labels[i] if multi else labels[i] == lab))
            where.append(f"{lab!r} (row {r})")
        report.error(
            "rare_label",
            f"{len(rare)} label(s) have fewer than 2 letters: {', '.join(where)}"
            f"{' and more' if len(rare) > 8 else ''}. Each label needs at least 2 letters so that it can appear in both the "
            "training and the test split: add letters, merge the label into another, or delete those rows.",
        )

    folds = ProtocolOptions().cv_folds
    few = sorted((c, lab) for lab, c in counts.items() if 2 <= c < folds)
    if few and len(counts) > 1:  # only a warning: the protocol (and its number of folds) is chosen when a run starts
        report.warn(
            "few_letters_for_cv",
            f"{len(few)} label(s) have fewer than {folds} letters: {', '.join(f'{lab!r} ({c})' for c, lab in few[:8])}"
            f"{' and more' if len(few) > 8 else ''}. Cross-validation with {folds} folds needs one letter of each label per "
            "test fold, so a run would refuse them: use fewer folds (cv_folds), the holdout protocol, or add or merge letters.",
        )

    usable_texts, usable_labels = [texts[i] for i in ok_rows], [labels[i] for i in ok_rows]
    report.usable_rows = [i + 1 for i in ok_rows]
    # Exact duplicates only: near-duplicates take ~1.5 s per 5,000 letters, too slow for every validation.
    dup = report.duplicates = duplicates.summary(usable_texts, usable_labels, near_threshold=None, row_numbers=report.usable_rows)
    exact, clash = dup["exact"], dup["conflicts"]
    if exact["n_groups"]:
        shown = "; ".join(f"rows {_row_list(g['row_numbers'], 6)}" for g in exact["examples"][:3])
        report.warn(
            "duplicate_text",
            f"{exact['n_letters_in_groups'] - exact['n_groups']} letter(s) repeat another letter (the same text once case, "
            f"spacing and punctuation are ignored): {exact['n_groups']} group(s) of copies, largest first: {shown}. Each group is "
            "kept together in every split and cross-validation fold, so copies never straddle training and test; delete "
            "surplus copies if they over-weight those letters.",
        )
    if clash["n_groups"]:
        shown = "; ".join(f"rows {_row_list(g['row_numbers'], 6)} ({_labels_text(g['labels'])})" for g in clash["groups"][:5])
        more = clash["n_groups"] - 5
        report.warn(
            "conflicting_labels",
            f"{clash['n_groups']} group(s) of copies ({clash['n_letters']} letters) carry different labels: {shown}"
            f"{f'; and {more} more groups' if more > 0 else ''}. The same letter cannot be both: correct the labels, or "
            "delete the copies with the wrong label.",
        )
    for text in dup["warnings"]:
        report.warn("large_duplicate_group", text)

    return report, usable_texts, usable_labels


def load_dataset(path: str | Path, text_column: str, label_column: str, *, label_sep: str | None = None) -> Dataset:
    """Load and validate a dataset; raises DataError listing every blocking problem."""
    if str(path) == DEFAULT_NAME:
        return default_dataset()
    df = read_table(path)
    report, texts, labels = validate_table(df, text_column, label_column, path=Path(path).name, label_sep=label_sep)
    report.raise_for_errors()
    return Dataset(texts, labels, str(path), text_column, label_column, report.multi_label, report)


def validate_file(path: str | Path, text_column: str, label_column: str, *, label_sep: str | None = None) -> ValidationReport:
    """The validation report for a file; file-level problems become a one-error report."""
    try:
        df = read_table(path)
    except DataError as exc:
        report = ValidationReport(path=str(path))
        report.error("unreadable_file", str(exc))
        return report
    report, _, _ = validate_table(df, text_column, label_column, path=Path(path).name, label_sep=label_sep)
    return report


def default_dataset() -> Dataset:
    """The bundled default: MTSamples letters of five specialties (see README)."""
    ds = load_dataset(DEFAULT_DATASET, *DEFAULT_COLUMNS)
    ds.source = DEFAULT_NAME
    return ds


def require_single_label(dataset: Dataset) -> None:
    """Refuse a multi-label dataset for a method that predicts one label per letter."""
    if dataset.multi_label:
        raise ClinBenchError(
            "This dataset is multi-label (several labels per letter); multi-label evaluation is not available in this "
            "version. Choose a label column with one label per letter."
        )
