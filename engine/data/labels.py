"""The labels of letters: reading a label cell (one label; several as a JSON list or split on a separator; or one 0/1
column per label) and the multi-label summary a validation report shows (labels per letter, letters with no label,
which labels occur together).

In multi-label data a letter may carry no label at all: its labels are the empty tuple `()`, a valid "no label"
outcome (every label absent), not a class of its own unless a run asks for it (the option no_label: class,
`label_the_unlabelled`). What is usable is engine.data's business; this module reads and counts.
"""

from __future__ import annotations

import dataclasses
import difflib
import unicodedata
from collections import Counter

import numpy as np
import pandas as pd

from engine.errors import DataError

YES, NO = ("1", "1.0", "true", "yes"), ("0", "0.0", "false", "no")  # a 0/1 label column's values (case ignored; blank = 0)


def is_blank(value) -> bool:
    if value is None:
        return True
    if isinstance(value, float) and np.isnan(value):
        return True
    if isinstance(value, str):
        return not value.strip() or value.strip().lower() in {"nan", "null", "none", "n/a"}
    return False


def clean(label: str) -> str:
    """A label without control characters (NUL, escape, ...): they are invisible and would make a new class."""
    return "".join(ch for ch in label if unicodedata.category(ch) != "Cc").strip()


def has_control(value, label_sep: str | None = None) -> bool:
    items = value if isinstance(value, (list, tuple)) else [value]
    items = [v.replace(label_sep, "") if label_sep and isinstance(v, str) else v for v in items]
    return any(isinstance(v, str) and any(unicodedata.category(ch) == "Cc" for ch in v.strip()) for v in items)


def parse(value, label_sep: str | None):
    """One label (str) or a sorted tuple of labels (a list cell, or a cell split on `label_sep`), without control
    characters and never an empty string; None when the cell is blank."""
    if isinstance(value, (list, tuple)):
        return tuple(sorted({clean(str(v)) for v in value if not is_blank(v)} - {""}))
    if is_blank(value):
        return None
    if label_sep:  # split first: the separator may itself be a control character (a tab)
        return tuple(sorted({clean(p) for p in str(value).split(label_sep)} - {""}))
    return clean(str(value)) or None


def columns_option(value) -> list[str] | None:
    """The data option label_columns as a list of column names: from a list, or a text 'a,b,c' (the CLI's); None when empty."""
    if value is None:
        return None
    if isinstance(value, str):
        value = value.split(",")
    if not isinstance(value, (list, tuple)):
        raise DataError(f"label_columns must list column names, e.g. [a, b, c] or 'a,b,c'; got {type(value).__name__} {value!r}.")
    names = [str(v).strip() for v in value if str(v).strip()]
    return list(dict.fromkeys(names)) or None


def _flag(value) -> bool | None:
    """A 0/1 cell: True, False, or None when it is neither (blank is 0)."""
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, (int, float, np.integer, np.floating)) and not is_blank(value):
        return {0: False, 1: True}.get(value)
    if is_blank(value):
        return False
    text = str(value).strip().lower()
    return True if text in YES else False if text in NO else None


def from_columns(
    df: pd.DataFrame, columns: list[str], name: str, label_sep: str | None = None
) -> tuple[list[tuple], list[tuple[str, str]]]:
    """The labels of each row from one 0/1 column per label (the column names whose cell is 1), and the problems as
    (code, message): a label separator given too, fewer than 2 columns, a column missing (with the columns present and a
    close match), values other than 0/1 (with their rows, counted from 1 after the header). No labels when there is a problem."""
    present = [str(c) for c in df.columns]
    if label_sep:
        return [], [
            ("label_options", "Give label_sep (several labels in one column) or label_columns (one 0/1 column per label), not both.")
        ]
    if len(columns) < 2:
        return [], [
            (
                "too_few_label_columns",
                f"label_columns names {len(columns)} column ({', '.join(map(repr, columns)) or 'none'}): name at least 2, one "
                "0/1 column per label (a single yes/no label is one label column with two values: use label_column).",
            )
        ]
    problems = []
    for col in columns:
        if col not in present:
            close = difflib.get_close_matches(col, present, n=1)
            hint = f" Did you mean {close[0]!r}?" if close else ""
            problems.append(("missing_column", f"label column {col!r} not found in {name}. Columns present: {', '.join(present)}.{hint}"))
    if problems:
        return [], problems
    flags = {c: [_flag(v) for v in df[c].tolist()] for c in columns}
    for col, values in flags.items():
        bad = [(n, v) for n, (v, f) in enumerate(zip(df[col].tolist(), values), start=1) if f is None]
        if bad:
            shown = ", ".join(f"{n} ({v!r})" for n, v in bad[:8]) + (f" and {len(bad) - 8} more" if len(bad) > 8 else "")
            problems.append(
                (
                    "label_column_value",
                    f"label column {col!r} must hold 0 or 1 (also true/false, yes/no; blank is 0) in every row; {len(bad)} row(s) "
                    f"hold something else: rows {shown} (counted from 1 after the header). Correct these cells.",
                )
            )
    if problems:
        return [], problems
    return [tuple(sorted(c for c in columns if flags[c][i])) for i in range(len(df))], []


def summary(labels: list[tuple], classes: list[str] | None = None) -> dict:
    """The multi-label summary of letters' label tuples: `cardinality` (mean labels per letter), `labels_per_letter`
    ({number of labels: letters}, from 0 to the most), `no_label` (letters with none) and `cooccurrence` ({"labels":
    [...], "matrix": [[...]]}: letters carrying both labels; the diagonal counts each label's letters)."""
    classes = sorted(set(classes or ()) | {lab for labs in labels for lab in labs})
    sizes = Counter(len(labs) for labs in labels)
    index, matrix = {c: i for i, c in enumerate(classes)}, np.zeros((len(classes), len(classes)), dtype=int)
    for labs in labels:
        at = [index[lab] for lab in labs]
        matrix[np.ix_(at, at)] += 1
    return {
        "cardinality": round(sum(len(labs) for labs in labels) / len(labels), 4) if labels else 0.0,
        "labels_per_letter": {k: sizes.get(k, 0) for k in range(max(sizes) + 1)} if sizes else {},
        "no_label": sizes.get(0, 0),
        "cooccurrence": {"labels": classes, "matrix": matrix.tolist()},
    }


def lines(class_counts: dict[str, int], label_summary: dict | None) -> list[str]:
    """What `python -m engine data validate` prints of the labels: letters per label, then for multi-label data the
    letters with no label, labels per letter and the co-occurrence table (labels numbered, to keep it narrow)."""
    out = [f"  {lab:40s} {n}" for lab, n in class_counts.items()]
    if not label_summary:
        return out
    s, co = label_summary, label_summary["cooccurrence"]
    out.append(f"  {'(no label: kept, a valid outcome)':40s} {s['no_label']}")
    dist = ", ".join(f"{k}: {n}" for k, n in s["labels_per_letter"].items())
    out.append(f"Labels per letter: mean {s['cardinality']:.2f} (letters with 0, 1, 2, ... labels: {dist})")
    if co["labels"]:
        width = max(5, *(len(str(v)) + 1 for row in co["matrix"] for v in row))
        out.append("Co-occurrence (letters carrying both labels; the diagonal: letters with the label):")
        out.append(f"  {'':44s}" + "".join(f"{j:>{width}d}" for j in range(1, len(co["labels"]) + 1)))
        for i, (lab, row) in enumerate(zip(co["labels"], co["matrix"]), start=1):
            out.append(f"  {i:>3d} {lab[:40]:40s}" + "".join(f"{v:>{width}d}" for v in row))
    return out


NO_LABEL = "no label"  # the label of letters with none, when they are asked to be a class (no_label: class)


def label_the_unlabelled(ds):
    """`ds` with each multi-label letter that carries no label given the label NO_LABEL (single-label data: unchanged)."""
    if not ds.multi_label or all(ds.labels):
        return ds
    if NO_LABEL in ds.classes:
        raise DataError(f"The data already has a label {NO_LABEL!r}, so letters with no label cannot take it: use no_label: outcome.")
    return dataclasses.replace(ds, labels=[labs or (NO_LABEL,) for labs in ds.labels])


def indicator(label_sets, classes) -> np.ndarray:
    """One row per letter, one 0/1 column per class of `classes`: the labels each letter carries (or is predicted)."""
    pos = {c: j for j, c in enumerate(classes)}
    out = np.zeros((len(label_sets), len(classes)), dtype=np.int8)
    for i, labs in enumerate(label_sets):
        for lab in labs:
            out[i, pos[lab]] = 1
    return out
