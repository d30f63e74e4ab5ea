"""Multi-label data and evaluations on the pages (a letter carries a set of labels, possibly empty): the Data page's label
summary, the Compare page's headline choice and per-label view, the Embeddings page's colouring by one label, the
Classify page's labels with their probabilities and thresholds."""

from __future__ import annotations

import pandas as pd
import streamlit as st

from engine import api
from ui import charts, common, compare

NO_LABEL = "(no label)"
HEADLINE_KEY = "headline"  # the session's chosen headline of multi-label comparisons (shared by the pages)


def data_summary(report, name: str) -> None:
    """A multi-label validation report's labels: labels per letter, letters with no label, co-occurrence."""
    s = report.label_summary
    if not report.multi_label or not s:
        return
    st.markdown(
        f"**Several labels per letter** (multi-label): {len(report.class_counts)} labels, on average **{s['cardinality']:.2f}** "
        f"per letter; **{s['no_label']}** letter(s) carry no label (kept: 'no label' is a valid outcome, every label absent)."
    )
    c1, c2 = st.columns([1, 2])
    per = pd.DataFrame({"Labels on a letter": list(s["labels_per_letter"]), "Letters": list(s["labels_per_letter"].values())})
    c1.dataframe(per, hide_index=True, width="content")
    c2.caption(
        "Co-occurrence: the letters carrying both labels (the diagonal: the letters with the label). Methods that accept "
        "several labels per letter: svc, logreg and the tf-idf reference (one classifier and one tuned threshold per label)."
    )
    if s["cooccurrence"]["labels"]:
        common.chart(
            charts.cooccurrence_heatmap(s["cooccurrence"], f"Letters carrying both labels in {name}"), f"co-occurrence {name}", "cooc"
        )


def headline_picker(key: str) -> str:
    """The headline score of a multi-label comparison: the task's own (api.headline: micro-F1) until the reader picks
    another; the pick is kept in the URL as `metric` and for the session, so Compare and Export lead with the same one."""
    common.from_url("metric", list(compare.HEADLINES), f"{key}-metric")
    if f"{key}-metric" not in st.session_state:
        st.session_state[f"{key}-metric"] = st.session_state.get(HEADLINE_KEY) or api.headline("multi-label")
    metric = st.radio(
        "Headline score",
        list(compare.HEADLINES),
        format_func=compare.HEADLINES.get,
        horizontal=True,
        key=f"{key}-metric",
        help="Micro-F1 pools every (letter, label) decision; macro-F1 averages the labels' F1; samples-F1 averages the letters' F1.",
    )
    common.to_url("metric", metric)
    st.session_state[HEADLINE_KEY] = metric
    return metric


def per_label_section(per_class: pd.DataFrame) -> None:
    """Per label x evaluation: precision, recall, F1 (a heatmap) and the table, with the letters carrying/predicted each label."""
    st.subheader("Per label: precision, recall, F1")
    common.chart(charts.per_label_heatmap(per_class), "precision recall F1 per label", "heat")
    st.caption(compare.ML_PER_LABEL_NOTE + compare.LETTERS_ONCE)
    with st.expander("Per label: precision, recall, F1, letters with it, letters predicted"):
        common.table(compare.per_label_table(per_class), "precision recall F1 per label", "perclass")


def colours(scored: dict, truth: list, label: str, colour_by: str) -> tuple[list[str], list[str]]:
    """Each letter's colour on the map: training letters grey; test letters (`scored`: api.scored_letters) by whether they
    carry `label` (true label), were given it (predicted label), or whether their whole label set was right (correct /
    wrong: the definition Compare's list of letters with a wrong label set uses)."""
    colour = ["training letter"] * len(truth)
    for i, s in scored.items():
        has, given = label in s["truth"], label in s["prediction"]
        if colour_by == "true label":
            colour[i] = f"has {label}" if has else f"not {label}"
        elif colour_by == "predicted label":
            colour[i] = f"predicted {label}" if given else f"not predicted {label}"
        else:
            colour[i] = "wrong" if s["wrong"] else "correct"
    order = {
        "true label": [f"has {label}", f"not {label}"],
        "predicted label": [f"predicted {label}", f"not predicted {label}"],
    }.get(colour_by, ["correct", "wrong"])
    return colour, [*order, "training letter"]


def classify_answers(rows: list[dict]) -> None:
    """Multi-label classifiers' answers: the labels each predicts (possibly none), every label's probability and threshold."""
    ok = [r for r in rows if not r.get("error") and r.get("thresholds") is not None]
    if not ok:
        return
    st.markdown(
        "**Several labels per letter**: each label is predicted when its probability reaches its threshold (tuned on training letters); a letter may get none."
    )
    table = pd.DataFrame(
        [
            {
                "Classifier": r["evaluation"],
                "Predicted labels": " + ".join(r["labels"]) or NO_LABEL,
                "Labels": len(r["labels"]),
                **common.answer_costs(r),
            }
            for r in ok
        ]
    )
    common.table(table, "classified letter labels", "ml-answers")
    common.chart(charts.label_probabilities_chart(ok), "label probabilities", "ml-answers-chart")
    long = pd.DataFrame(
        [
            {
                "Classifier": r["evaluation"],
                "Label": lab,
                "Probability": round(p, 4),
                "Threshold": round(r["thresholds"][lab], 4),
                "Predicted": "yes" if lab in r["labels"] else "no",
            }
            for r in ok
            for lab, p in r["scores"].items()
        ]
    )
    with st.expander("Every label's probability and threshold", expanded=len(ok) == 1):
        common.table(long, "label probabilities and thresholds", "ml-scores")


def label_text(value) -> str:
    """A truth or prediction as text: a label, or a multi-label letter's labels joined with ' + ' ('(no label)' when none)."""
    if isinstance(value, (list, tuple)):
        return " + ".join(map(str, value)) or NO_LABEL
    return str(value)
