"""The one row numbering the pages show: a letter is named by its data row in the input file, counted from 1 as a
spreadsheet shows it (the header not counted), in every table, hover, download and message. The engine's JSON and
tables keep 0-based rows (documented); the pages turn them into these numbers here and nowhere else. Pure (no streamlit)."""

from __future__ import annotations

import pandas as pd

HELP = "The letter's data row in the input file, counted from 1 as a spreadsheet shows it (the header row not counted)."


def file_row(position: int, rows: list[int] | None = None) -> int:
    """The row number a page shows for the letter at 0-based `position`. `rows`: the dataset's 0-based input rows
    (Dataset.rows, when letters were left out); None when `position` already is the input file's 0-based data row."""
    return int(rows[position] if rows is not None else position) + 1


def file_rows(df: pd.DataFrame, column: str = "row") -> pd.DataFrame:
    """A copy of an engine table whose `column` holds 0-based input rows, with the row numbers a page shows."""
    out = df.copy()
    if column in out:
        out[column] = [file_row(r) for r in out[column]]
    out.attrs = df.attrs
    return out
