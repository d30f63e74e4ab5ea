"""Models: the bundled models, the study's presets, and any hub id or local folder - with availability."""

from __future__ import annotations

import pandas as pd
import streamlit as st

from engine import api
from engine.errors import ClinBenchError
from ui import common

common.page(
    "Models",
    "Encoders and decoders ClinBench can embed letters with. Bundled models work offline; the others need "
    "one download into the local Hugging Face cache (or a local folder).",
)
st.caption(f"Device: {api.device()}")


def _row(d: dict) -> dict:
    return {
        "Name": d["name"],
        "Source": d["source"],
        "Kind": d["kind"] or "read from its config",
        "Parameters": f"{d['params'] / 1e6:,.0f}M" if d["params"] else "?",
        "Offline": "yes" if d["offline"] else "no",
        "Why": d["reason"],
        "What": d["description"],
        "Reference": d["ref"],
    }


COLUMNS = {"Why": st.column_config.TextColumn(width="medium"), "What": st.column_config.TextColumn(width="large")}


rows = [_row(d) for d in api.model_rows()]
st.subheader("Bundled and presets")
st.dataframe(pd.DataFrame(rows), hide_index=True, width="stretch", column_config=COLUMNS)
st.caption("Scroll the table sideways for what each model is and its reference.")

st.subheader("Add a hub id or a local folder")
name = st.text_input("Hub id (organisation/model) or folder path", placeholder="dmis-lab/biobert-v1.1  or  /path/to/model-folder")
if name.strip():
    try:
        d = api.describe_model(name)
        st.dataframe(pd.DataFrame([_row(d)]), hide_index=True, width="stretch")
        if d["offline"]:
            st.success(f"{d['name']} can be used now: name it on the Runs page.")
        else:
            st.warning(
                f"{d['name']} is not available offline: {d['reason']}. A run with it fails with this reason unless the hub is reachable."
            )
    except ClinBenchError as exc:
        common.error(exc)

st.subheader("A model on a server (OpenAI-compatible API)")
st.markdown(
    "A generative model that runs on a GPU server (vLLM, llama.cpp, Ollama, TGI) behind an OpenAI-compatible API. "
    "**Letters are sent to that server** when zero-shot or few-shot runs with it (the only methods it can run: they need "
    "label log-likelihoods, not the weights). Only this machine (loopback) and the hosts listed in the option "
    "allowed_hosts or in CLINBENCH_ALLOWED_HOSTS may be contacted."
)
s1, s2 = st.columns([2, 1])
url = s1.text_input("Server URL (its OpenAI API base)", placeholder="http://127.0.0.1:8000/v1", key="server-url")
served = s2.text_input("Model name on the server (empty: the first it serves)", key="server-model")
hosts = st.text_input("Allowed hosts besides this machine, comma-separated (option allowed_hosts)", key="server-hosts")
if st.button("Test connection", disabled=not url.strip()):
    try:
        with st.spinner("Asking the server…"):
            got = api.check_server(url, served, [h.strip() for h in hosts.split(",") if h.strip()] or None)
        st.write(f"It serves: {', '.join(got['served']) or '(no list)'}.")
        ok = st.success if got["mode"] == "echo" else st.warning
        ok(f"{got['model']}: {got['scoring']}.")
        st.code(got["name"], language=None)
        st.caption(
            "Use this model id on the Runs page (with zero-shot or few-shot), in a spec's models or on the command line. "
            "llama-cpp-python's server reports echoed log-probabilities one token out of place for a model whose tokenizer "
            "adds no BOS (SmolLM2, for one): set the option server_prefix to the model's first special token for it."
        )
        st.session_state["servers"] = sorted({*st.session_state.get("servers", []), got["name"]})
    except ClinBenchError as exc:
        common.error(exc)
