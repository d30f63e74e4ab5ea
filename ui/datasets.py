"""The Data page's files: reading an upload (the sheet of a workbook), and the list of saved datasets.

A file that cannot be read is reported under the name the user gave it (never the cache's content-addressed name),
and the saved datasets stay listed below the error: nothing stored is touched by a failed upload.
"""

from __future__ import annotations

import pandas as pd
import streamlit as st

from engine import api
from engine.errors import ClinBenchError
from ui import common

UPLOAD_TYPES = ["csv", "tsv", "jsonl", "ndjson", "json", "xlsx"]


def read_upload(upload) -> tuple | None:
    """(stored path, table, sheet or None, guessed text column, guessed label column) of an uploaded file; None (the error
    shown) when it cannot be read. A workbook of several sheets gets a sheet choice (its first sheet by default)."""
    try:
        path = api.store_upload(upload.name, upload.getvalue())
        sheets = api.sheet_names(path)
        sheet = None
        if sheets and len(sheets) > 1:
            sheet = st.columns(3)[0].selectbox(
                "Sheet", sheets, key="sheet", help="The workbook's sheet that holds the letters: a header row, then one letter per row."
            )
        elif sheets:
            sheet = sheets[0]
        table = api.read_table(path, sheet)
        guess_text, guess_label = api.guess_columns(table)
    except ClinBenchError as exc:
        common.error(exc, f"{upload.name} cannot be read")
        return None
    return path, table, sheet if sheets and len(sheets) > 1 else None, guess_text, guess_label


def saved_list() -> None:
    """The saved datasets (name, letters, labels, columns, the options they are read with) and forgetting one."""
    st.subheader("Saved datasets")
    saved, skipped = api.saved_datasets()
    for name, why in skipped:
        st.warning(f"{name}: {why}")
    if not saved:
        st.caption("None yet: upload a file above.")
        return
    rows = [
        {
            "name": s.name,
            "letters": s.n_letters,
            "labels": ", ".join(s.classes),
            "text column": s.text_column,
            "label column": s.label_column,
            "read with": ", ".join(f"{k}: {v}" for k, v in (s.options or {}).items()),
            "saved": s.created,
            "id": s.id,
        }
        for s in saved
    ]
    st.dataframe(pd.DataFrame(rows), hide_index=True, width="stretch")
    with st.expander("Forget a saved dataset"):
        gone = st.selectbox("Dataset", [s.id for s in saved], format_func=lambda i: next(s.name for s in saved if s.id == i))
        if st.button("Forget it", help="Removes it from this list; the file stays in the cache because runs may refer to it."):
            api.forget_dataset(gone)
            st.rerun()
