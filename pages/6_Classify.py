"""Classify: one letter through every trained classifier of a dataset - label, score, agreement, latency."""

from __future__ import annotations

import random

import pandas as pd
import streamlit as st

from engine import api
from engine.errors import ClinBenchError
from ui import binary, charts, common, multilabel, numbering

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
common.pickled_notice([e for e in evals if e.key in chosen])  # classifiers of ClinBench <= 0.2: converted on the user's word


def _load_test_letter() -> None:
    try:
        ev = next(e for e in evals if e.key in chosen) if chosen else evals[0]
        pred = api.predictions(ev)
        letters = api.letters(ev)
        i = random.Random().choice(pred["test_index"])
        st.session_state["letter"] = letters.texts[i]
        seen = " Under cv the stored classifier was refitted on every letter, this one included." if pred.get("protocol") == "cv" else ""
        truth = multilabel.label_text(pred["y_true"][pred["test_index"].index(i)])
        st.session_state["letter_note"] = f"Test letter: row {numbering.file_row(i, letters.rows)} (true label: {truth}).{seen}"
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
spaces = {e.embeddings_key: e for e in evals if e.key in chosen and e.stage == "frozen" and e.embeddings_key}  # one per embedding space
near_by = st.selectbox(
    "Nearest training letters in the embedding space of",
    list(spaces),
    format_func=lambda k: spaces[k].label,
    help="The five letters this classifier was trained on that lie closest to the pasted letter (cosine similarity).",
)

if st.button("Classify", type="primary"):
    picked = [e for e in evals if e.key in chosen]
    if not picked:
        common.error("Choose at least one classifier above.")
    else:
        try:
            with st.status("Classifying…") as status:
                answers = []
                for i, e in enumerate(picked, 1):  # each model loads on first use in this session: say so while it happens
                    status.update(label=f"Classifier {i}/{len(picked)}: {e.label} (its first letter also loads the model)…")
                    answers += api.classify(text, [e])
                if near_by:
                    status.update(label=f"Finding the nearest training letters of {spaces[near_by].label}…")
                st.session_state["nearest"] = api.nearest(text, spaces[near_by]) if near_by else None
                status.update(label=f"Classified by {len(picked)} classifier(s)", state="complete", expanded=False)
            st.session_state["answers"] = answers
        except ClinBenchError as exc:
            common.error(exc)
            st.session_state.pop("answers", None)

rows = st.session_state.get("answers")
if rows:
    agree = api.agreement(rows)
    what = "Majority label set" if "label_votes" in agree else "Majority label"
    if agree["label"]:
        st.metric(what, agree["label"], f"{agree['share']:.0%} of {agree['n']} classifiers agree", delta_color="off")
    for r in rows:
        if r["error"]:
            st.error(f"{r['evaluation']}: {r['error']}")
    multilabel.classify_answers(rows)  # several labels per letter: each label's probability and threshold
    binary.classify_answers(rows, evals)  # two labels: P(positive label) against each classifier's threshold
    ok = [r for r in rows if r.get("predicted") and r.get("thresholds") is None]
    if ok:
        df = pd.DataFrame(
            [
                {
                    "Classifier": r["evaluation"],
                    "Label": r["predicted"],
                    "Probability": round(r["score"], 3),
                    **common.answer_costs(r),
                }
                for r in ok
            ]
        )
        common.table(df, "classified letter", "answers")
        common.chart(charts.scores_chart(ok), "classifier answers", "answers-chart")
        with st.expander("Every label's probability"):
            st.dataframe(pd.DataFrame({r["evaluation"]: r["scores"] for r in ok}).round(4), width="stretch")

near = st.session_state.get("nearest") if rows else None
if near:
    st.subheader("Nearest training letters")
    st.caption(
        f"In the embedding space of {spaces[near_by].label if near_by in spaces else 'the chosen model'}: the letters it was "
        "trained on that lie closest to this one (cosine similarity), with their labels — why it may have answered as it did."
    )
    st.dataframe(
        numbering.file_rows(pd.DataFrame(near))
        .rename(columns={"row": "Row", "label": "Label", "similarity": "Similarity", "letter": "First words"})
        .round(3),
        hide_index=True,
        width="stretch",
        column_config={
            "First words": st.column_config.TextColumn(width="large"),
            "Row": st.column_config.NumberColumn(help=numbering.HELP),
        },
    )
