"""Embeddings: UMAP maps of each model's letter vectors, coloured by true label, predicted label or
correct/wrong; hover for the first words, select a point for the whole letter; stages side by side."""

from __future__ import annotations

import numpy as np
import streamlit as st

from engine import api
from engine.errors import ClinBenchError
from ui import charts, common, multilabel, numbering

common.page(
    "Embeddings",
    "Each point is a letter, placed by UMAP from the model's embedding; colours show how the evaluation scored it. "
    "Select a point (click, or box/lasso) to read the letter.",
)
warming = st.empty()  # cleared once a map is drawn
if api.start_umap_warm_up()["state"] == "warming":
    warming.caption("Preparing UMAP in the background (first use after start)…")
evals, ds = common.pick_evaluations("emb")
if not evals:
    st.info("No evaluations yet: run one on the Runs page, then its letters appear here as a map.")
    st.stop()

models_ = sorted({e.model for e in evals})
multi = any(e.multi_label for e in evals)  # several labels per letter: colour by one chosen label (has it / not)
c1, c2, c3 = st.columns([2, 3, 2]) if multi else (*st.columns(2), None)
colourings = ["true label", "predicted label", "correct / wrong"]
common.from_url("model", models_, "emb-model")
common.from_url("colour", colourings, "emb-colour")
model = c1.selectbox("Model", models_, key="emb-model")
colour_by = c2.radio("Colour by", colourings, horizontal=True, key="emb-colour")
common.to_url("model", model)
common.to_url("colour", colour_by)
label = None
if multi:
    common.from_url("label", list(ds["classes"]), "emb-label")
    label = c3.selectbox("Label", list(ds["classes"]), key="emb-label", help="Several labels per letter: the map shows one at a time.")
    common.to_url("label", label)
    st.caption(
        f"Several labels per letter: true and predicted colours show **{label}** only (whether a letter carries it, was given "
        "it); correct / wrong is about the whole label set, as Compare's list of letters with a wrong label set."
    )
mine = [e for e in evals if e.model == model and e.embeddings_key]
stages = [s for s in ("frozen", "tuned") if any(e.stage == s for e in mine)] + sorted({e.stage for e in mine} - {"frozen", "tuned"})


@st.cache_data(show_spinner=False, max_entries=4)
def _letters(key: str) -> tuple[list[str], list[str], list[int]]:
    """The letters' texts, labels and row numbers as the pages show them (ui.numbering)."""
    ev = next(e for e in api.evaluations()[0] if e.key == key)
    ds_ = api.letters(ev)
    numbers = [numbering.file_row(i, ds_.rows) for i in range(len(ds_))]
    return ds_.texts, [v if isinstance(v, tuple) else str(v) for v in ds_.labels], numbers


@st.cache_data(show_spinner=False, max_entries=16)
def _coords(embeddings_key: str) -> np.ndarray:
    return api.umap_map(embeddings_key)


def _colours(scored: dict, truth: list[str]) -> tuple[list[str], list[str] | None]:
    """Each letter's colour from the letters the evaluation scored once (api.scored_letters: wrong as Compare counts it)."""
    if label is not None:
        return multilabel.colours(scored, truth, label, colour_by)
    colour = ["training letter"] * len(truth)
    for i, s in scored.items():
        colour[i] = {"true label": s["truth"], "predicted label": s["prediction"]}.get(colour_by, "wrong" if s["wrong"] else "correct")
    order = ["correct", "wrong", "training letter"] if colour_by == "correct / wrong" else sorted(set(truth)) + ["training letter"]
    return colour, order


letters = common.letters_in_downloads("emb")
cols = st.columns(len(stages)) if len(stages) > 1 else [st.container()]
for col, stage in zip(cols, stages):
    with col:
        options = {e.key: e for e in mine if e.stage == stage}
        common.from_url(stage, list(options), f"ev-{stage}")
        ev = options[
            st.selectbox(f"Evaluation ({stage} embeddings)", list(options), format_func=lambda k, o=options: o[k].label, key=f"ev-{stage}")
        ]
        common.to_url(stage, ev.key)
        try:
            texts, truth, numbers = _letters(ev.key)
            with st.spinner("Computing the map (UMAP; cached afterwards)…"):
                coords = _coords(ev.embeddings_key)
            warming.empty()
            scored = api.scored_letters(ev)
            colour, order = _colours(scored, truth)
        except ClinBenchError as exc:
            common.error(exc, f"No map for {ev.label}")
            continue
        fig = charts.umap_scatter(
            coords,
            colour,
            texts,
            f"{model} ({stage}) embeddings, UMAP — colour: {colour_by}" + (f" ({label})" if label else ""),
            colour_by,
            order,
            numbers,
        )
        st.caption(
            "Grey: training letters (holdout); coloured: the test letters."
            if ev.protocol != "cv"
            else "Cross-validation: every letter is a test letter (no grey points)"
            + ("." if colour_by == "true label" else "; its first repeat's prediction is shown, as Compare's letters.")
        )
        state = common.chart(
            fig,
            f"umap {model} {stage} {colour_by}",
            f"umap-{stage}",
            download_fig=None if letters else charts.without_letters(fig),
            on_select="rerun",
            selection_mode=("points", "box", "lasso"),
        )
        points = (state or {}).get("selection", {}).get("points", []) if state else []
        if points:
            idx = int(points[0]["customdata"] if not isinstance(points[0]["customdata"], list) else points[0]["customdata"][0])
            extra = f" · predicted **{multilabel.label_text(scored[idx]['prediction'])}**" if idx in scored else " · training letter"
            st.markdown(
                f"**Row {numbers[idx]}** · true label **{multilabel.label_text(truth[idx])}**{extra}"
                + (f" · {len(points)} points selected, showing the first" if len(points) > 1 else "")
            )
            st.text_area("Letter", texts[idx], height=260, key=f"letter-{stage}-{idx}", disabled=True)
