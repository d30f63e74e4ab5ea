"""Runs: start a run (dataset x models x methods, options), the queue, live progress, logs, cancel/resume/delete.

The page only submits and reads: workers execute runs in their own processes, so a run goes on
when this tab closes. The live part refreshes itself every 2 s (st.fragment), never blocking.
"""

from __future__ import annotations

import time

import pandas as pd
import streamlit as st

from engine import datasets, experiment, jobs, models
from engine.errors import ClinBenchError
from ui import common

common.page("Runs", "Queue a comparison; workers run it in the background. Closing the tab does not stop a run.")

with st.form("new-run"):
    st.subheader("New run")
    saved, _ = datasets.list_saved()
    choices = {"default": "default: 600 MTSamples letters"} | {s.id: f"{s.name} ({s.n_letters} letters)" for s in saved}
    c1, c2 = st.columns(2)
    ds_id = c1.selectbox("Dataset", list(choices), format_func=choices.get)
    name = c2.text_input("Run name", "comparison")
    names = [e.name for e in models.registry()]
    chosen = st.multiselect("Models", names, default=["minilm"])
    extra = st.text_input("More models: hub ids or local folders, comma-separated", "")
    runnable = experiment.runnable_methods()
    methods_ = st.multiselect(
        "Methods", runnable, default=runnable[:1], format_func=lambda m: f"{m} — {experiment.METHOD_TITLES.get(m, m)}"
    )
    c1, c2, c3, c4 = st.columns(4)
    d = experiment.DEFAULT_OPTIONS
    pooling = c1.selectbox("Pooling", ["mean", "last", "cls"], index=["mean", "last", "cls"].index(d["pooling"]))
    max_length = c2.number_input("max_length (tokens)", 16, 8192, int(d["max_length"]), step=64)
    test_size = c3.number_input("Test fraction", 0.05, 0.5, float(d["test_size"]), step=0.05)
    seed = c4.number_input("Seed", 0, 1_000_000, int(d["seed"]))
    c1, c2, c3 = st.columns(3)
    smote = c1.toggle("SMOTE (oversample rare labels)", d["smote"])
    grid = c2.toggle(
        "Grid search (in training split)", d["grid"], help="Choose C (and the SVC kernel) by cross-validation inside the training split."
    )
    balanced = c3.toggle("Balanced class weights", d["class_weight"] == "balanced")
    with st.expander("Fine-tuning options (linear-probe, lora, lora-svc, domain-adapt)"):
        c1, c2, c3, c4 = st.columns(4)
        epochs = c1.number_input(
            "Epochs (0 = method default)", 0, 100, 0, help="Most epochs; the best epoch on the validation split is kept."
        )
        lr = c2.number_input("Learning rate (0 = method default)", 0.0, 1.0, 0.0, step=1e-4, format="%.5f")
        batch_size = c3.number_input("Batch size", 1, 256, int(d["batch_size"]))
        lora_r = c4.number_input("LoRA rank r", 1, 256, int(d["lora_r"]))
    submitted = st.form_submit_button("Start run", type="primary")

if submitted:
    all_models = chosen + [m.strip() for m in extra.split(",") if m.strip()]
    spec = {
        "name": name.strip() or "comparison",
        "models": all_models,
        "methods": methods_,
        "data": "default" if ds_id == "default" else datasets.get(ds_id).spec_data(),
        "options": {
            "pooling": pooling,
            "max_length": int(max_length),
            "test_size": float(test_size),
            "seed": int(seed),
            "smote": bool(smote),
            "grid": bool(grid),
            "class_weight": "balanced" if balanced else None,
            "epochs": int(epochs) or None,
            "learning_rate": float(lr) or None,
            "batch_size": int(batch_size),
            "lora_r": int(lora_r),
            "lora_alpha": 2 * int(lora_r),
        },
    }
    if not methods_:
        common.error("Choose at least one method.")
    else:
        try:
            with st.spinner("Checking the data and the models…"):
                run_id = jobs.submit(experiment.parse_spec(spec, where="the form"))
            st.session_state["watch"] = run_id
            st.success(f"Run {run_id} queued with {len(all_models) * len(methods_)} step(s).")
        except ClinBenchError as exc:
            common.error(exc, "The run was not queued")


def _eta(seconds) -> str:
    if seconds is None:
        return ""
    return f"ETA {int(seconds // 60)} min {int(seconds % 60)} s" if seconds >= 60 else f"ETA {seconds:.0f} s"


def _step_line(s: dict) -> None:
    p = s["progress"]
    frac = p["done"] / p["total"] if p["total"] else (1.0 if s["status"] == "done" else 0.0)
    bits = [f"**{s['index'] + 1}. {s['title']}** — {s['status']}"]
    if s["status"] == "running":
        bits.append(f"{p['stage']} {p['done']}/{p['total']}" + (f" · {p['rate']:.1f}/s" if p["rate"] else "") + f" {_eta(p['eta_s'])}")
    r = s["result"] if s["status"] == "done" else None
    if r and "macro_f1" in r:
        bits.append(f"macro-F1 **{r['macro_f1']:.3f}** (95% CI {r['macro_f1_ci'][0]:.3f}–{r['macro_f1_ci'][1]:.3f})")
    elif r and "perplexity_after" in r:
        bits.append(
            f"held-out perplexity {r['perplexity_before']:.1f} → **{r['perplexity_after']:.1f}**; "
            f"new model `{r['adapted_model']}` (pick it under Models)"
        )
    if s["seconds"] is not None:
        bits.append(f"{s['seconds']:.0f} s")
    st.progress(min(max(frac, 0.0), 1.0), text=" · ".join(bits))
    if s["error"] and s["status"] != "cancelled":
        st.error(f"Step {s['index'] + 1}: {s['error']}")


@st.fragment(run_every=2)
def live() -> None:
    try:
        runs = jobs.list_runs(limit=30)
    except ClinBenchError as exc:
        common.error(exc)
        return
    common.worker_status()
    if not runs:
        st.info("No runs yet: start one above, or with the home page's button.")
        return
    st.subheader("Queue")
    st.dataframe(
        pd.DataFrame(
            [
                {
                    "run": r["id"],
                    "name": r["name"],
                    "status": r["status"],
                    "steps done": f"{r['counts']['done']}/{r['n_steps']}",
                    "created": time.strftime("%Y-%m-%d %H:%M", time.localtime(r["created"])),
                }
                for r in runs
            ]
        ),
        hide_index=True,
        width="stretch",
    )
    ids = [r["id"] for r in runs]
    watch = st.session_state.get("watch")
    run_id = st.selectbox("Run", ids, index=ids.index(watch) if watch in ids else 0, format_func=lambda i: f"run {i}", key="run-pick")
    run = next(r for r in runs if r["id"] == run_id)
    st.markdown(f"### Run {run['id']}: {run['name']} — {run['status']}")
    for s in run["steps"]:
        _step_line(s)
    c1, c2, c3, _ = st.columns([1, 1, 1, 4])
    try:
        if c1.button("Cancel", disabled=run["status"] in jobs.FINAL_STATES, key=f"cancel-{run_id}"):
            jobs.cancel(run_id)
            st.rerun(scope="fragment")
        if c2.button("Resume", disabled=run["status"] not in ("interrupted", "cancelled", "failed"), key=f"resume-{run_id}"):
            jobs.resume(run_id)
            st.rerun(scope="fragment")
        if c3.button(
            "Delete",
            disabled=run["status"] not in jobs.FINAL_STATES,
            key=f"delete-{run_id}",
            help="Forgets the run and its log; its stored results stay (Compare shows them).",
        ):
            jobs.delete(run_id)
            st.session_state.pop("watch", None)
            st.rerun(scope="fragment")
    except ClinBenchError as exc:
        common.error(exc)
    with st.expander("Log"):
        st.code(jobs.read_log(run_id)[-20_000:] or "(empty)", language=None)


live()
