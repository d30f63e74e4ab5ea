"""The Runs page's pieces: one step's live progress and curves, and the time estimate shown before a run starts."""

from __future__ import annotations

import pandas as pd
import streamlit as st

from engine import api
from engine.errors import ClinBenchError
from ui import charts, common


def step(s: api.StepView) -> None:
    """A progress bar with the step's state, stage or result and duration; its error; its training curves."""
    st.progress(
        s.fraction,
        text=" · ".join(
            b
            for b in (
                f"**{s.index + 1}. {s.title}** — {s.status}",
                s.detail if s.status != "failed" else "",
                api.fmt_duration(s.seconds),
                f"on {s.node}" if s.node else "",
            )
            if b
        ),
    )
    if s.error and s.status != "cancelled":
        st.error(f"Step {s.index + 1}: {s.error}")
    if s.metrics:
        common.chart(
            charts.training_curves(s.metrics, f"Training curves: {s.title}"),
            f"training curves {s.title}",
            f"curves-{s.index}",
            downloads=s.status.final,
        )


def estimate(spec: dict) -> None:
    """How long the run would take on this machine, per step, and what each figure rests on."""
    try:
        with st.spinner("Estimating from this machine's earlier runs…"):
            rows = api.estimate(spec, where="the form")
    except ClinBenchError as exc:
        common.error(exc, "No estimate")
        return
    known = [r.seconds for r in rows if r.seconds is not None]
    if len(known) == len(rows):
        st.info(f"Estimated time on this machine: about **{api.fmt_duration(sum(known))}** (cached embeddings make it quicker).")
    elif known:
        st.info(f"Estimated time: at least **{api.fmt_duration(sum(known))}**, plus the steps this machine has not run before.")
    else:
        st.info("No estimate yet: this machine has not finished these models and methods before. The first run gives the figures.")
    table = [{"step": r.title, "estimate": api.fmt_duration(r.seconds) if r.seconds is not None else "–", "from": r.basis} for r in rows]
    st.dataframe(pd.DataFrame(table), hide_index=True, width="stretch")


def prompt_preview(spec: dict) -> None:
    """The filled prompt template for the dataset's first letter, and the answers each label is scored on."""
    try:
        d = spec["data"]
        ds = api.default_dataset() if d == api.DEFAULT_DATASET else api.load_dataset(**d)
        text = api.prompt_preview(ds, spec["options"])
    except ClinBenchError as exc:
        common.error(exc, "No preview")
        return
    st.caption(
        "The prompt zero-shot, few-shot and instruct-lora give the first letter (the letter shortened here; cut by tokens when scored):"
    )
    st.code(text, language=None, wrap_lines=True)
