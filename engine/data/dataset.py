"""Labelled letters: loading CSV/JSONL/XLSX (read by engine.tables) and the validation report (splits are engine.protocols').

A dataset is a table with one letter per row; the user names the text column and the
label column. A label cell holds one label, or several (multi-label) given as a JSON
list in JSONL or as a string split on `label_sep` (e.g. "|") in CSV; or `label_columns` names
one 0/1 column per label (the label column is then ignored). Label cells are read by
engine.labels. In multi-label data a letter with no label (an empty list or cell, 0 in every
label column) is kept with the labels `()`: a "no label" outcome, counted and warned about.

Data options (keywords of `load_dataset` and `validate_file`; spec `data:` keys; CLI flags): `text_template` builds
each letter from several columns (engine.data.dataset.tables.template_texts; a text column that holds a {template} is one too);
`split_column` or `test_ids` give the dataset's own train/test split (`Dataset.split`), which `protocol: fixed` scores;
`answer_column` names a column of reference answers (e.g. PubMedQA's LONG_ANSWER) that is never part of a letter: what a
generative model's written answers are scored against; `subgroup_column` a column (site, sex, age band, note type) whose
values are scored apart (engine.evaluation.subgroups), never part of a letter either; `sheet` names the sheet of an
.xlsx workbook to read (default: its first). The text template's columns and the answer column are kept beside
the letters (`Dataset.fields`), so a prompt can lay out the template's columns its own way.

`validate_table` never raises for content problems: it returns a report of every
issue found (errors block use, warnings do not). `load_dataset` raises a DataError
that lists all errors at once, so a user fixes the file in one pass.
"""

from __future__ import annotations

import difflib
from collections import Counter
from dataclasses import dataclass, field, replace
from pathlib import Path

import pandas as pd

from engine.cache.storage import sha256_json, sha256_texts
from engine.data import duplicates, tables
from engine.data import labels as labelling
from engine.data.tables import MAX_FILE_MB_ENV, SUFFIXES, guess_columns, max_file_mb, read_table  # noqa: F401 (the module's API)
from engine.errors import DataError
from engine.options.config import DEFAULT_DATASET, DEFAULT_NAME
from engine.options.groups import ProtocolOptions

DEFAULT_COLUMNS = ("text", "label")
DATA_OPTIONS = (
    "text_template",
    "split_column",
    "test_ids",
    "answer_column",
    "label_columns",
    "subgroup_column",
    "sheet",
)  # besides path, columns, label_sep


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
    duplicates: dict | None = None  # engine.data.dataset.duplicates.summary of the usable rows (exact duplicates and conflicts)
    no_label: int = 0  # multi-label: usable letters that carry no label (kept: a "no label" outcome)
    label_summary: dict | None = None  # multi-label: engine.data.dataset.labels.summary (cardinality, labels per letter, co-occurrence)
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
            "no_label": self.no_label,
            "label_summary": self.label_summary,
        }

    def label_lines(self) -> list[str]:
        """The labels as `python -m engine data validate` prints them (engine.data.dataset.labels.lines)."""
        return labelling.lines(self.class_counts, self.label_summary)

    def raise_for_errors(self) -> None:
        if self.errors:
            lines = "\n".join(f"  - {e.message}" for e in self.errors)
            raise DataError(f"{self.path} cannot be used ({len(self.errors)} problem(s)):\n{lines}")


@dataclass
class Dataset:
    texts: list[str]
    labels: list  # str per letter, or tuple[str, ...] per letter when multi_label (() for a letter with no label)
    source: str
    text_column: str
    label_column: str
    multi_label: bool = False
    report: ValidationReport | None = None
    rows: list[int] | None = None  # 0-based data rows of the input file, when letters were left out (None: all, in order)
    split: list[str] | None = None  # "train" / "test" per letter: the dataset's own split (protocol fixed)
    options: dict | None = None  # the data options it was read with (DATA_OPTIONS that were given), for manifests and reruns
    fields: dict[str, list[str]] | None = None  # text per letter of the text template's columns and the answer column

    def __len__(self) -> int:
        return len(self.texts)

    def without(self, drop) -> Dataset:
        """A copy without the letters at the positions `drop` (their input rows are remembered in `rows`)."""
        gone = {int(i) for i in drop}
        keep = [i for i in range(len(self)) if i not in gone]
        rows = [self.rows[i] if self.rows is not None else i for i in keep]
        split = [self.split[i] for i in keep] if self.split is not None else None
        fields = {k: [v[i] for i in keep] for k, v in self.fields.items()} if self.fields else None
        texts, labels = [self.texts[i] for i in keep], [self.labels[i] for i in keep]
        return replace(self, texts=texts, labels=labels, rows=rows, split=split, fields=fields)

    @property
    def letter_fields(self) -> dict[str, list[str]] | None:
        """The text template's columns (what a prompt may lay out its own way); never the answer column."""
        opts = self.options or {}
        template = tables.template_fields(opts["text_template"]) if opts.get("text_template") else []
        hidden = {opts.get("answer_column"), *([] if opts.get("subgroup_column") in template else [opts.get("subgroup_column")])}
        return {k: v for k, v in (self.fields or {}).items() if k not in hidden} or None

    @property
    def subgroups(self) -> list[str] | None:
        """Each letter's value of the subgroup column (data option subgroup_column; blank: '(blank)'), or None. Scored
        apart (engine.evaluation.subgroups); never part of a letter a classifier reads."""
        column = (self.options or {}).get("subgroup_column")
        if not column or not self.fields or column not in self.fields:
            return None
        return [v.strip() or "(blank)" for v in self.fields[column]]

    @property
    def answers(self) -> list[str] | None:
        """The reference answer of each letter (data option answer_column), or None."""
        column = (self.options or {}).get("answer_column")
        return self.fields[column] if column and self.fields else None

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


# --- validation --------------------------------------------------------------


def _row_list(rows: list[int], limit: int = 8) -> str:
    shown = ", ".join(str(r) for r in rows[:limit])
    return shown + (f" and {len(rows) - limit} more" if len(rows) > limit else "")


def _labels_text(labels: list) -> str:
    """The distinct labels of a group, e.g. 'a' vs 'b' (a multi-label letter's labels joined with +)."""
    distinct = dict.fromkeys(("+".join(map(repr, lab)) or "no label") if isinstance(lab, list) else repr(lab) for lab in labels)
    return " vs ".join(distinct)


def validate_table(
    df: pd.DataFrame, text_column: str, label_column: str, *, path: str = "data", label_sep: str | None = None, label_columns=None
) -> tuple[ValidationReport, list[str], list]:
    """Check a table for use as labelled letters. Returns (report, texts, labels) of the usable rows. With `label_columns`
    (one 0/1 column per label, a list or 'a,b,c') `label_column` is ignored."""
    report = ValidationReport(path=path, n_rows=len(df), columns=[str(c) for c in df.columns])
    label_columns = labelling.columns_option(label_columns)
    for role, col in (("text", text_column), *([] if label_columns else [("label", label_column)])):
        if col not in df.columns:
            close = difflib.get_close_matches(col, report.columns, n=1)
            hint = f" Did you mean {close[0]!r}?" if close else ""
            report.error(
                "missing_column",
                f"{role} column {col!r} not found in {path}. Columns present: {', '.join(report.columns) or '(none)'}.{hint}",
            )
    if text_column in (label_columns or [label_column]) and not report.errors:
        report.error(
            "same_column",
            f"The text column and the label column must differ: both are {text_column!r}, so every letter would carry "
            "its own answer. Choose the column with the letters' text and the column with their labels.",
        )
    raw_labels = df[label_column].tolist() if label_column in df.columns and not label_columns else []
    if label_columns:
        raw_labels, problems = labelling.from_columns(df, label_columns, path, label_sep)
        report.issues += [Issue("error", code, message) for code, message in problems]
        label_column = ", ".join(label_columns)  # (as messages name it)
    if report.errors:
        return report, [], []
    if len(df) == 0:
        report.error("no_rows", f"{path} has a header but no rows.")
        return report, [], []

    row_no = list(range(1, len(df) + 1))  # 1-based data rows (header not counted)
    texts, labels = [], []
    blank_text, blank_label, cleaned, only_control = [], [], [], []
    for n, text, raw_label in zip(row_no, df[text_column].tolist(), raw_labels):
        lab = labelling.parse(raw_label, label_sep)
        if labelling.has_control(raw_label, label_sep):
            (cleaned if lab else only_control).append(n)
        if labelling.is_blank(text) or not isinstance(text, str):
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
    if only_control:
        report.error(
            "label_only_control_characters",
            f"{len(only_control)} label(s) in column {label_column!r} hold only control characters (invisible bytes such as "
            f"NUL): row{'s' if len(only_control) > 1 else ''} {_row_list(only_control)}. Label these letters or delete the rows.",
        )
        blank_label = [n for n in blank_label if n not in set(only_control)]
    if cleaned:
        report.warn(
            "label_control_characters",
            f"{len(cleaned)} label(s) in column {label_column!r} held control characters (invisible bytes such as NUL), "
            f"removed so that they do not make new labels: row{'s' if len(cleaned) > 1 else ''} {_row_list(cleaned)}. Check these rows, and remove the "
            "characters from the file to silence this warning.",
        )
    multi = bool(label_columns or label_sep) or any(isinstance(lab, tuple) for lab in labels)
    if multi:  # a letter with no label is kept: a "no label" outcome
        blank_label, labels = [], [lab if isinstance(lab, tuple) else (lab,) if lab is not None else () for lab in labels]
    if blank_label:
        report.error(
            "empty_label",
            f"{len(blank_label)} row(s) have no label in column {label_column!r}: rows {_row_list(blank_label)}. "
            "Label these letters or delete the rows.",
        )

    bad = set(blank_text) | set(blank_label) | set(only_control)
    ok_rows = [i for i in range(len(texts)) if (i + 1) not in bad]
    report.multi_label = multi
    counts = Counter(dict.fromkeys(label_columns or (), 0))  # (a label column without a 1 is a label with no letter)
    counts.update(x for i in ok_rows for x in (labels[i] if multi else [labels[i]]))
    report.class_counts = dict(sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))
    if multi:
        report.label_summary = labelling.summary([labels[i] for i in ok_rows], list(counts))
        no_label = [i + 1 for i in ok_rows if not labels[i]]
        report.no_label = len(no_label)
        if no_label:
            report.warn(
                "no_label",
                f"{len(no_label)} letter(s) carry no label ({'0 in every label column' if label_columns else 'an empty list or cell'}): "
                f'rows {_row_list(no_label)}. They are kept and count as "no label" outcomes (every label absent), not as a '
                "label of their own; label them if that is a mistake.",
            )

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
            r = next((i + 1 for i in ok_rows if (lab in labels[i] if multi else labels[i] == lab)), None)
            where.append(f"{lab!r} ({f'row {r}' if r else 'no letter'})")
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
    _warn_leakage(report, usable_texts, usable_labels, text_column, label_column)

    return report, usable_texts, usable_labels


def _warn_leakage(report: ValidationReport, texts: list[str], labels: list, text_column: str, label_column: str) -> None:
    """Warn when the text names the label: each distinct text belongs to one label, and there are as many texts as labels."""
    key = [tuple(lab) if isinstance(lab, (list, tuple)) else lab for lab in labels]
    by_text = {}
    for t, lab in zip(texts, key):
        by_text.setdefault(" ".join(t.lower().split()), set()).add(lab)
    if len(set(key)) < 2 or len(by_text) != len(set(key)) or any(len(labs) > 1 for labs in by_text.values()):
        return
    examples = ", ".join(f"{t[:30]!r} -> {next(iter(labs))!r}" for t, labs in list(by_text.items())[:3])
    report.warn(
        "text_predicts_label",
        f"Column {text_column!r} gives the label away: it holds {len(by_text)} distinct texts for {len(by_text)} labels of "
        f"{label_column!r}, one per label ({examples}), so any classifier scores perfectly. This label leak makes the "
        "scores meaningless: choose the column with the letters' free text.",
    )


def load_dataset(
    path: str | Path,
    text_column: str,
    label_column: str,
    *,
    label_sep: str | None = None,
    text_template: str | None = None,
    split_column: str | None = None,
    test_ids: str | Path | None = None,
    answer_column: str | None = None,
    label_columns: list[str] | str | None = None,
    subgroup_column: str | None = None,
    sheet: str | None = None,
) -> Dataset:
    """Load and validate a dataset; raises DataError listing every blocking problem (data options: module docstring).
    With label_columns, label_column is ignored: the dataset's label_column names the label columns ('a, b, c')."""
    if str(path) == DEFAULT_NAME:
        return default_dataset()
    cols = labelling.columns_option(label_columns)
    options = {"text_template": text_template, "split_column": split_column, "test_ids": test_ids, "answer_column": answer_column}
    options |= {"subgroup_column": subgroup_column, "sheet": sheet}
    df, text_column, split, columns = tables.letters_table(path, text_column, label_column, {**options, "label_columns": cols})
    report, texts, labels = validate_table(
        df, text_column, label_column, path=tables.shown_name(path), label_sep=label_sep, label_columns=cols
    )
    report.raise_for_errors()
    ds = Dataset(texts, labels, str(path), text_column, ", ".join(cols or [label_column]), report.multi_label, report)
    ds.split = [split[r - 1] for r in report.usable_rows] if split is not None else None
    ds.options = {k: str(v) for k, v in options.items() if v is not None} | ({"label_columns": cols} if cols else {}) or None
    ds.fields = {c: [v[r - 1] for r in report.usable_rows] for c, v in columns.items()} or None
    return ds


def validate_file(path: str | Path, text_column: str, label_column: str, *, label_sep: str | None = None, **options) -> ValidationReport:
    """The validation report for a file (data options as keywords); file-level problems become a one-error report."""
    if set(options) - set(DATA_OPTIONS):
        raise TypeError(f"validate_file() got unknown data option(s) {sorted(set(options) - set(DATA_OPTIONS))}")
    try:
        cols = labelling.columns_option(options.pop("label_columns", None))
        df, text_column, _, _ = tables.letters_table(path, text_column, label_column, {**options, "label_columns": cols})
    except DataError as exc:
        report = ValidationReport(path=str(path))
        report.error("unreadable_file", str(exc))
        return report
    return validate_table(df, text_column, label_column, path=tables.shown_name(path), label_sep=label_sep, label_columns=cols)[0]


def default_dataset() -> Dataset:
    """The bundled default: MTSamples letters of five specialties (see docs/data-models.md)."""
    ds = load_dataset(DEFAULT_DATASET, *DEFAULT_COLUMNS)
    ds.source = DEFAULT_NAME
    return ds
