"""Classify: one letter through every trained classifier of a dataset - label, score, agreement, latency."""

from __future__ import annotations

import random

import pandas as pd
import streamlit as st

from engine import api
from engine.errors import ClinBenchError
from ui import charts, common

common.page(
    "Classify",
    "Paste or upload one letter. Each trained classifier embeds it the way its training letters were "
    "embedded and answers; the letter is not stored.",
)
evals, ds = common.pick_evaluations("classify")
if not evals:
    st.info("No trained classifiers yet: run a comparison on the Runs page first.")
    st.stop()

labels = {e.key: e.label for e in evals}
chosen = st.multiselect("Classifiers", list(labels), default=list(labels), format_func=labels.get)


def _load_test_letter() -> None:
    try:
        ev = next(e for e in evals if e.key in chosen) if chosen else evals[0]
        pred = api.predictions(ev)
        texts = api.letters(ev).texts
        i = random.Random().choice(pred["test_index"])
        st.session_state["letter"] = texts[i]
        seen = " Under cv the stored classifier was refitted on every letter, this one included." if pred.get("protocol") == "cv" else ""
        st.session_state["letter_note"] = f"Test letter {i} (true label: {pred['y_true'][pred['test_index'].index(i)]}).{seen}"
    except ClinBenchError as exc:
        st.session_state["letter_note"] = f"error: {exc}"


c1, c2 = st.columns([1, 3])
c1.button(
    "Load a test letter",
    on_click=_load_test_letter,
    help="A random letter the evaluation scored: under holdout one the classifier never saw; under cv the stored "
    "classifier was refitted on every letter.",
)
upload = c2.file_uploader("…or upload a .txt file", type=["txt"], key="letter-file", label_visibility="collapsed")
if upload is not None and st.session_state.get("letter_file_id") != upload.file_id:
    try:
        st.session_state["letter"] = upload.getvalue().decode("utf-8")
        st.session_state["letter_note"] = f"From {upload.name}."
    except UnicodeDecodeError as exc:
        st.session_state["letter_note"] = (
            f"error: {upload.name} is not UTF-8 text (byte {exc.start}). Save it as UTF-8 plain text "
            "and upload it again, or paste the letter."
        )
    st.session_state["letter_file_id"] = upload.file_id
note = st.session_state.get("letter_note")
if note and note.startswith("error: "):
    common.error(note[7:])
elif note:
    st.caption(note)
text = st.text_area("Letter", key="letter", height=220, placeholder="Paste the text of one clinical letter here.")

if st.button("Classify", type="primary"):
    if not chosen:
        common.error("Choose at least one classifier above.")
    else:
        try:
            with st.spinner("Embedding the letter with each model (the first time loads the model)…"):
                st.session_state["answers"] = api.classify(text, [e for e in evals if e.key in chosen])
        except ClinBenchError as exc:
            common.error(exc)
            st.session_state.pop("answers", None)

rows = st.session_state.get("answers")
if rows:
    agree = api.agreement(rows)
    if agree["label"]:
        st.metric("Majority label", agree["label"], f"{agree['share']:.0%} of {agree['n']} classifiers agree", delta_color="off")
    for r in rows:
        if r["error"]:
            st.error(f"{r['evaluation']}: {r['error']}")
    ok = [r for r in rows if r.get("predicted")]
    if ok:
        df = pd.DataFrame(
            [
                {
                    "classifier": r["evaluation"],
                    "label": r["predicted"],
                    "probability": round(r["score"], 4),
                    "latency ms": round(r["latency_ms"], 1),
                    "model load s": round(r["load_s"], 2),
                    "letter cut to max_length": r["truncated"],
                }
                for r in ok
            ]
        )
        common.table(df, "classified letter", "answers")
        common.chart(charts.scores_chart(ok), "classifier answers", "answers-chart")
        with st.expander("Every label's probability"):
            st.dataframe(pd.DataFrame({r["evaluation"]: r["scores"] for r in ok}).round(4), width="stretch")
