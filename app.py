"""ClinBench dashboard (home page). Thin: every number comes from the engine.

Serve with `.venv/bin/streamlit run app.py` (binds 127.0.0.1; no usage statistics).
"""
from __future__ import annotations

import pandas as pd
import streamlit as st

from engine import data, models
from engine.devices import choose

st.set_page_config(page_title="ClinBench", layout="wide")
st.title("ClinBench")
st.write(
    "ClinBench tells you which language model classifies your clinical letters best: it embeds labelled letters with "
    "each model, trains classifiers on a training split and scores them on held-out letters, all on this machine — "
    "no letter leaves it."
)


@st.cache_data(show_spinner=False)
def _default_summary() -> tuple[int, dict, str]:
    ds = data.default_dataset()
    return len(ds), dict(pd.Series(ds.labels).value_counts().sort_index()), ds.data_hash[:12]


left, right = st.columns([2, 3])
with left:
    st.subheader("Default dataset")
    n, counts, h = _default_summary()
    st.write(f"**{n} MTSamples letters** (CC0) from five specialties; text = the transcription only. Hash `{h}`.")
    st.dataframe(pd.DataFrame({"label": list(counts), "letters": list(counts.values())}), hide_index=True, width="stretch")
with right:
    st.subheader("Models")
    st.caption(f"Device: {choose().describe()}")
    rows = [models.describe(e) for e in models.registry()]
    table = pd.DataFrame([{"name": r["name"], "kind": r["kind"], "parameters": f"{r['params'] / 1e6:,.0f}M" if r["params"] else "?",
                           "offline": "yes" if r["offline"] else "no", "why": r["reason"]} for r in rows])
    st.dataframe(table, hide_index=True, width="stretch")

st.info("Run a comparison from the terminal: `.venv/bin/python -m engine run SPEC` or "
        "`.venv/bin/python -m engine evaluate --data default --model minilm`. The full dashboard (runs, maps, comparison, "
        "live classification, export) is being built.")
