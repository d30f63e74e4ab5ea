"""Embeddings: UMAP maps of each model's letter vectors, coloured by true label, predicted label or
correct/wrong; hover for the first words, select a point for the whole letter; stages side by side."""

from __future__ import annotations

import numpy as np
import streamlit as st

from engine import api
from engine.errors import ClinBenchError
from ui import charts, common, multilabel

common.page(
    "Embeddings",
    "Each point is a letter, placed by UMAP from the model's embedding. Grey points are training letters; "
    "colours show the test letters. Select a point (click, or box/lasso) to read the letter.",
)
warm = api.start_umap_warm_up()
if warm["state"] == "warming":
    st.caption("Preparing UMAP in the background (first use after start)…")
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
        f"Several labels per letter: colours show **{label}** only — whether a test letter carries it, was given it, or was right about it."
    )
mine = [e for e in evals if e.model == model and e.embeddings_key]
stages = [s for s in ("frozen", "tuned") if any(e.stage == s for e in mine)] + sorted({e.stage for e in mine} - {"frozen", "tuned"})


@st.cache_data(show_spinner=False, max_entries=4)
def _letters(key: str) -> tuple[list[str], list[str]]:
    ev = next(e for e in api.evaluations()[0] if e.key == key)
    ds_ = api.letters(ev)
    return ds_.texts, [v if isinstance(v, tuple) else str(v) for v in ds_.labels]


@st.cache_data(show_spinner=False, max_entries=16)
def _coords(embeddings_key: str) -> np.ndarray:
    return api.umap_map(embeddings_key)


def _colours(ev, truth: list[str]) -> tuple[list[str], list[str] | None]:
    pred = api.predictions(ev)
    if label is not None:
        return multilabel.colours(pred, truth, label, colour_by)
    colour = ["training letter"] * len(truth)
    for i, t, p in zip(pred["test_index"], pred["y_true"], pred["y_pred"]):
        colour[i] = {"true label": t, "predicted label": p}.get(colour_by, "correct" if t == p else "wrong")
    order = ["correct", "wrong", "training letter"] if colour_by == "correct / wrong" else sorted(set(truth)) + ["training letter"]
    return colour, order


letters = common.letters_in_downloads("emb")
cols = st.columns(len(stages)) if len(stages) > 1 else [st.container()]
for col, stage in zip(cols, stages):
    with col:
        options = {e.key: e for e in mine if e.stage == stage}
        common.from_url(stage, list(options), f"ev-{stage}")
        ev = options[
            st.selectbox(f"Predictions of ({stage})", list(options), format_func=lambda k, o=options: o[k].label, key=f"ev-{stage}")
        ]
        common.to_url(stage, ev.key)
        try:
            texts, truth = _letters(ev.key)
            with st.spinner("Computing the map (UMAP; cached afterwards)…"):
                coords = _coords(ev.embeddings_key)
            colour, order = _colours(ev, truth)
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
            pred = api.predictions(ev)
            where = dict(zip(pred["test_index"], pred["y_pred"]))
            extra = f" · predicted **{multilabel.label_text(where[idx])}**" if idx in where else " · training letter"
            st.markdown(
                f"**Letter {idx}** · true label **{multilabel.label_text(truth[idx])}**{extra}"
                + (f" · {len(points)} points selected, showing the first" if len(points) > 1 else "")
            )
            st.text_area("Letter", texts[idx], height=260, key=f"letter-{stage}-{idx}", disabled=True)
