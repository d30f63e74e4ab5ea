"""Runs: start a run (dataset x models x methods, options), the queue, live progress and training curves,
logs, cancel/resume/delete.

The page only submits and reads: workers execute runs in their own processes, so a run goes on when this
tab closes. The live part refreshes itself every 2 s (st.fragment), never blocking. The option widgets
are drawn from the engine's option fields (ui/forms.py).
"""

from __future__ import annotations

import time

import pandas as pd
import streamlit as st

from engine import api
from engine.errors import ClinBenchError
from ui import common, forms, runs

common.page("Runs", "Queue a comparison; workers run it in the background. Closing the tab does not stop a run.")
top = st.container()  # the queue and the chosen run's live progress, drawn above the form (below, once the form is handled)

st.subheader("New run")
saved, _ = api.saved_datasets()
choices = {api.DEFAULT_DATASET: "default: 600 MTSamples letters"} | {s.id: f"{s.name} ({s.n_letters} letters)" for s in saved}
ds_id = runs.dataset_choice(choices)
data = api.DEFAULT_DATASET if ds_id == api.DEFAULT_DATASET else api.saved_dataset(ds_id).spec_data()
multi = any(s.multi_label for s in saved if s.id == ds_id)
with st.form("new-run"):
    name = st.columns(2)[0].text_input("Run name", "comparison")
    chosen = st.multiselect("Models", api.model_names(), default=["minilm"])
    extra = st.text_input("More models: hub ids or local folders, comma-separated", "")
    servers = runs.server_choice()
    methods_ = runs.method_choice(forms.method_choices(multi), data)
    if multi:
        st.caption(forms.LABEL_SET_METHODS)
    option_values = forms.option_widgets()
    st.caption(runs.REFERENCE_NOTE)
    b1, b2, b3, _ = st.columns([1, 1.2, 1.4, 2.4])
    submitted = b1.form_submit_button("Start run", type="primary")
    estimated = b2.form_submit_button("Estimate time", help="How long this run would take, from this machine's earlier runs.")
    previewed = b3.form_submit_button(
        "Preview prompt", help="The prompt zero-shot, few-shot and instruct-lora give the first letter (Prompting options)."
    )

if submitted or estimated or previewed:
    all_models = chosen + [m.strip() for m in extra.split(",") if m.strip()] + servers
    spec = {
        "name": name.strip() or "comparison",
        "models": all_models,
        "methods": methods_,
        "data": data,
        "options": option_values,
    }
    if not methods_ and not previewed:
        common.error("Choose at least one method.")
    elif estimated:
        runs.estimate(spec)
    elif previewed:
        runs.prompt_preview(spec)
    else:
        try:
            with st.spinner("Checking the data and the models…"):
                run_id = api.submit(spec, where="the form")
            st.session_state["watch"] = st.session_state["run-pick"] = run_id  # the live view shows the new run
            n_steps = len(api.parse_spec(spec, where="the form").steps())
            st.success(f"Run {run_id} queued with {n_steps} step(s), the tf-idf reference last.")
            d = spec["data"]
            ds = api.default_dataset() if d == api.DEFAULT_DATASET else api.load_dataset(**d)
            pv = api.protocol_preview(ds, option_values, methods_[0])
            st.info(f"Protocol **{pv['protocol']}**: {pv['reason']}.")
            for w in pv["warnings"]:
                st.warning(w)
            runs.estimate(spec)
        except ClinBenchError as exc:
            common.error(exc, "The run was not queued")


@st.fragment(run_every=2)
def live() -> None:
    try:
        queue = api.list_runs(limit=30)
    except ClinBenchError as exc:
        common.error(exc)
        return
    common.worker_status()
    if not queue:
        st.info("No runs yet: start one below, or with the home page's button.")
        return
    st.subheader("Queue")
    table = [
        {
            "Run": r.id,
            "Name": r.name,
            "Status": str(r.status),
            "Steps done": f"{r.counts['done']}/{len(r.steps)}",
            "Progress": f"{r.fraction:.0%}",
            "Executor": r.executor,
            "Created": time.strftime("%Y-%m-%d %H:%M", time.localtime(r.created)),
        }
        for r in queue
    ]
    st.dataframe(pd.DataFrame(table), hide_index=True, width="stretch", height=min(250, 38 + 35 * len(table)))  # newest first
    ids = [r.id for r in queue]
    watch = st.session_state.get("watch")
    run_id = st.selectbox("Run", ids, index=ids.index(watch) if watch in ids else 0, format_func=lambda i: f"run {i}", key="run-pick")
    try:
        run = api.get_run(run_id)
    except ClinBenchError as exc:
        common.error(exc)
        return
    st.markdown(f"### Run {run.id}: {run.name} — {run.status}" + (" · on Ray" if run.executor == "ray" else ""))
    for s in run.steps:
        runs.step(s, on_ray=run.executor == "ray")
    runs.compare_link(run)
    c1, c2, c3, _ = st.columns([1, 1, 1, 4])
    try:
        if c1.button("Cancel", disabled=run.status.final, key=f"cancel-{run_id}"):
            api.cancel_run(run_id)
            st.rerun(scope="fragment")
        if c2.button("Resume", disabled=not run.status.restartable, key=f"resume-{run_id}"):
            api.resume_run(run_id)
            st.rerun(scope="fragment")
        if c3.button(
            "Delete",
            disabled=not run.status.final,
            key=f"delete-{run_id}",
            help="Forgets the run and its log; its stored results stay (Compare shows them).",
        ):
            api.delete_run(run_id)
            st.session_state.pop("watch", None)
            st.rerun(scope="fragment")
    except ClinBenchError as exc:
        common.error(exc)
    with st.expander("Log"):
        st.code(api.run_log(run_id)[-20_000:] or "(empty)", language=None)


with top:
    live()
