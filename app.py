"""ClinBench dashboard: the home page. Thin: every number comes from the engine.

Serve with `.venv/bin/streamlit run app.py` (binds 127.0.0.1; no usage statistics). This file
is the router (st.navigation) and the home page; the other pages are in pages/ (Data, Models,
Runs, Embeddings, Compare, Classify, Export), each reachable at /<Name>; shared UI helpers are in ui/.
"""

from __future__ import annotations

import pandas as pd
import streamlit as st

from engine import api
from engine.errors import ClinBenchError
from ui import common, storage

# No page icons: Streamlit fetches Material icons from fonts.gstatic.com, and nothing may leave this machine.
PAGES = [
    ("1_Data.py", "Data"),
    ("2_Models.py", "Models"),
    ("3_Runs.py", "Runs"),
    ("4_Embeddings.py", "Embeddings"),
    ("5_Compare.py", "Compare"),
    ("6_Classify.py", "Classify"),
    ("7_Export.py", "Export"),
]


@st.cache_data(show_spinner=False)
def _default_summary() -> tuple[int, dict, str]:
    ds = api.default_dataset()
    return len(ds), dict(pd.Series(ds.labels).value_counts().sort_index()), ds.data_hash[:12]


def compare_models() -> None:
    """The two ways to a comparison: the bundled one (a button) and the user's own letters (to the Data page)."""
    st.subheader("Compare models")
    spec = api.default_comparison()
    st.write(
        "**On your letters**: upload a CSV, JSON or Excel file of labelled letters on the **Data** page and save it; the "
        "**Runs** page then starts on it."
    )
    st.page_link("pages/1_Data.py", label="Compare models on my letters →")
    st.write(
        f"**On the bundled letters**: the bundled models ({', '.join(spec['models'])}) × {', '.join(spec['methods'])} on the "
        "default dataset. It runs in the background; follow it on the **Runs** page."
    )
    if st.button("Run the default comparison", type="primary"):
        try:
            run_id = api.submit(spec)
            st.success(f"Run {run_id} queued. Open the Runs page to watch it.")
            st.page_link("pages/3_Runs.py", label=f"Watch run {run_id}")
        except ClinBenchError as exc:
            common.error(exc, "The default comparison could not be queued")


def home() -> None:
    common.page("ClinBench")
    api.start_umap_warm_up()  # compiles UMAP in the background, so the first map on the Embeddings page is quick
    st.write(
        "ClinBench tells you which language model classifies your labelled clinical letters best: it embeds the letters with "
        "each model, trains classifiers and scores them on letters they were not trained on (cross-validation or a held-out split), "
        "with confidence intervals. "
        "Everything runs on this machine — no letter leaves it."
    )

    left, right = st.columns([2, 3])
    with left:
        st.subheader("Default dataset")
        n, counts, h = _default_summary()
        st.write(f"**{n} MTSamples letters** (CC0) from five specialties; text = the transcription only. Hash `{h}`.")
        st.dataframe(pd.DataFrame({"Label": list(counts), "Letters": list(counts.values())}), hide_index=True, width="stretch")
    with right:
        compare_models()

    st.subheader("Models")  # the whole width: a model's "Why" (e.g. not in the local cache: needs one download) is read whole
    st.caption(f"Device: {api.device()}")
    table = pd.DataFrame(
        [
            {
                "Name": r["name"],
                "Kind": r["kind"],
                "Parameters": f"{r['params'] / 1e6:,.0f}M" if r["params"] else "?",
                "Offline": "yes" if r["offline"] else "no",
                "Why": r["reason"],
            }
            for r in api.model_rows()
        ]
    )
    st.dataframe(table, hide_index=True, width="stretch", column_config={"Why": st.column_config.TextColumn(width="large")})
    common.worker_status()
    storage.usage()


nav = st.navigation([st.Page(home, title="Home", default=True)] + [st.Page(f"pages/{f}", title=t, url_path=t) for f, t in PAGES])
nav.run()
