"""External validation on the Compare page: one of the shown classifiers scored on another labelled file
(engine.api.score_external): upload, choose the columns, score; macro-F1 with its 95% CI and a per-class table (a
multi-label classifier: micro-, macro- and samples-F1 with CIs and the per-label table; its file may hold several labels
per letter, a JSON list or a separator)."""

from __future__ import annotations

import pandas as pd
import streamlit as st

from engine import api
from engine.errors import ClinBenchError
from ui import common, numbering

TEXT_GUESSES = ("text", "letter", "transcription", "note", "body")
LABEL_GUESSES = ("label", "specialty", "class", "category", "department")


def _guess(columns: list[str], names: tuple[str, ...], fallback: int) -> int:
    return next((i for i, c in enumerate(columns) if c.lower() in names), fallback % len(columns))


def _show_label_sets(res: dict) -> None:
    cols = st.columns(4)
    for col, (key, name) in zip(cols, (("micro_f1", "micro-F1"), ("macro_f1", "macro-F1"), ("samples_f1", "samples-F1")), strict=False):
        lo, hi = res[f"{key}_ci"]
        col.metric(name, f"{res[key]:.3f}", help=f"95% bootstrap CI {lo:.3f}–{hi:.3f}")
    if res.get("stored_micro_f1") is not None:
        cols[3].metric("stored evaluation", f"{res['stored_micro_f1']:.3f}", help="micro-F1 in its own evaluation, on its own letters")
    st.caption(
        f"{res['n_letters']} letters of {res['data'].rsplit('/', 1)[-1]}; subset accuracy {res['subset_accuracy']:.3f}, "
        f"Hamming loss {res['hamming_loss']:.3f}; each label decided at the classifier's own threshold."
    )
    table = pd.DataFrame(res["per_label"], columns=["label", "precision", "recall", "f1", "support", "predicted"])
    common.table(table.round(4), f"external validation {res['evaluation']}", f"ext-{res['result'][:10]}{res.get('part', '')}")


def _overlap_note(res: dict) -> None:
    """What the classifier had read of the file: nothing, some letters (their figures alone below), or unknown."""
    if not res.get("overlap_checked", True):
        st.caption("This classifier was stored before ClinBench recorded its training letters: the overlap cannot be checked.")
    elif res.get("n_overlap"):
        rows = ", ".join(str(numbering.file_row(r)) for r in res["overlap_rows"][:10]) + (" …" if len(res["overlap_rows"]) > 10 else "")
        st.warning(
            f"{res['n_overlap']} of the {res['n_letters']} letters were among its training letters (rows {rows}): the figures "
            "above count them; those on the unseen letters alone follow."
        )
        if res.get("unseen"):
            _show_figures({**res, **res["unseen"], "part": "-unseen"})
        else:
            st.caption("Every letter of the file was a training letter: no unseen letter to score.")


def _show(res: dict) -> None:
    _show_figures(res)
    _overlap_note(res)


def _show_figures(res: dict) -> None:
    if res.get("task") == "multi-label":
        _show_label_sets(res)
        return
    lo, hi = res["macro_f1_ci"]
    c1, c2, c3, c4 = st.columns(4)
    c1.metric("macro-F1", f"{res['macro_f1']:.3f}", help=f"95% bootstrap CI {lo:.3f}–{hi:.3f}, averaged over all classifier classes")
    c2.metric("95% CI", f"{lo:.3f}–{hi:.3f}")
    c3.metric("accuracy", f"{res['accuracy']:.3f}")
    if res.get("stored_macro_f1") is not None:
        c4.metric("stored evaluation", f"{res['stored_macro_f1']:.3f}", help="macro-F1 in its own evaluation, on its own letters")
    notes = [f"{res['n_letters']} letters of {res['data'].rsplit('/', 1)[-1]}"]
    if base := res.get("baseline"):
        notes.append(f"always answering '{base['label']}' scores macro-F1 {base['macro_f1']:.3f}")
    missing = [c for c in res["classes"] if c not in res.get("classes_in_file", res["classes"])]
    if missing:
        notes.append(f"absent from the file (they count in macro-F1): {', '.join(missing)}")
    st.caption("; ".join(notes) + ".")
    rows = [{"class": c, **v} for c, v in res["per_class"].items()]
    table = pd.DataFrame(rows, columns=["class", "precision", "recall", "f1", "support"])
    common.table(table.round(4), f"external validation {res['evaluation']}", f"ext-{res['result'][:10]}{res.get('part', '')}")


def external_validation(evals: list) -> None:
    """An expander: choose one of `evals` (the evaluations the page shows), upload a CSV/TSV/JSONL of labelled letters,
    choose its columns, score; the result stays shown until the choice changes."""
    if not evals:
        return
    with st.expander("External validation: score a classifier on another labelled file"):
        st.caption(
            "The chosen classifier, as it was trained, labels every letter of the file; nothing is retrained. The file's labels "
            "must be among the classifier's classes."
        )
        labels = [e.label for e in evals]
        chosen = st.selectbox("Classifier", labels, key="ext-evaluation")
        ev = evals[labels.index(chosen)]
        upload = st.file_uploader("Labelled letters", type=["csv", "tsv", "jsonl", "ndjson", "json", "xlsx"], key="ext-upload")
        if upload is None:
            return
        try:
            path = api.store_upload(upload.name, upload.getvalue())
            columns = [str(c) for c in api.read_table(path).columns]
        except ClinBenchError as exc:
            common.error(exc, f"{upload.name} cannot be read")
            return
        if not columns:
            common.error(f"{upload.name} has no columns.")
            return
        c1, c2 = st.columns(2)
        text_col = c1.selectbox("Text column", columns, index=_guess(columns, TEXT_GUESSES, 0), key="ext-text")
        label_col = c2.selectbox("Label column", columns, index=_guess(columns, LABEL_GUESSES, -1), key="ext-label")
        sep = None
        if ev.multi_label:  # several labels per letter: a JSON list needs nothing, a text cell its separator
            sep = st.text_input("Label separator (several labels in one cell; empty for a JSON list)", "", key="ext-sep") or None
        allow = st.checkbox(
            "Score letters the classifier was trained on too (and report the unseen letters alone)",
            key="ext-allow-overlap",
            help="Without it, a file sharing letters with the classifier's training letters is refused: its figures would be "
            "near-training figures, not an external validation.",
        )
        choice = (ev.key, str(path), text_col, label_col, sep, allow)
        if st.button("Score", key="ext-score", type="primary"):
            try:
                with st.spinner(f"Classifying the letters of {upload.name} with {ev.label}…"):
                    res = api.score_external(ev.key, path, text_col, label_col, label_sep=sep, allow_overlap=allow)
                    st.session_state["ext-result"] = (choice, res)
            except ClinBenchError as exc:
                st.session_state.pop("ext-result", None)
                common.error(exc, "External validation")
        kept = st.session_state.get("ext-result")
        if kept and kept[0] == choice:
            _show(kept[1])
