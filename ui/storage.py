"""The cache's size on the home page: by folder, dataset, model and run, and how to prune it (engine.housekeeping)."""

from __future__ import annotations

import pandas as pd
import streamlit as st

from engine import api
from engine.errors import ClinBenchError

TABS = {"run": "By run", "dataset": "By dataset", "model": "By model", "folder": "By folder"}


def usage() -> None:
    st.subheader("Storage")
    try:
        u = api.cache_usage()
    except ClinBenchError as exc:
        st.error(str(exc))
        return
    st.write(
        f"The cache holds **{api.human_size(u['total_bytes'])}**; no run refers to {api.human_size(u['unreferenced_bytes'])} of it. "
        "Free space with `python -m engine cache prune --orphans` (leftovers, damaged copies, unused embeddings), "
        "`--older-than DAYS` or `--run ID`: it never removes what a finished run still shows."
    )
    with st.expander("Where the space goes"):
        for tab, by in zip(st.tabs(list(TABS.values())), TABS):
            rows = [
                {by.capitalize(): r["group"], "Size": api.human_size(r["bytes"]), "Files or folders": r["items"]}
                | ({"Status": r["status"]} if by == "run" else {})
                for r in u["by"][by]
            ]
            tab.dataframe(pd.DataFrame(rows), hide_index=True, width="stretch")
