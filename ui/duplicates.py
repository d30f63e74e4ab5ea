"""The duplicate letters of an uploaded file, under its validation report on the Data page: exact-copy groups,
near-copy groups at a chosen threshold, label conflicts (rows and labels), and the letters of example groups."""

from __future__ import annotations

import pandas as pd
import streamlit as st

from engine import api
from engine.errors import ClinBenchError


@st.cache_data(show_spinner="Looking for near-duplicate letters…", max_entries=16)
def _summary(
    path: str, text_col: str, label_col: str, label_sep: str | None, threshold: float, label_columns: tuple = (), sheet: str | None = None
) -> dict:
    return api.duplicate_summary(
        path, text_col, label_col, label_sep=label_sep, near_threshold=threshold, label_columns=list(label_columns) or None, sheet=sheet
    )


def _label(lab) -> str:
    return (" + ".join(lab) or "(no label)") if isinstance(lab, (list, tuple)) else str(lab)


def _group(kind: str, group: dict) -> None:
    """One expander per example group: its rows and labels in the title, its letters (first 160 characters) inside."""
    rows, labels = group["row_numbers"], group["labels"]
    shown = ", ".join(map(str, rows[:6])) + (f" and {len(rows) - 6} more" if len(rows) > 6 else "")
    distinct = list(dict.fromkeys(map(_label, labels)))
    with st.expander(f"{kind}: {len(rows)} letters, rows {shown} · {' vs '.join(distinct)}"):
        similar, differs = group.get("similarity"), group.get("first_difference")  # near groups only
        for k, (row, lab, text) in enumerate(zip(rows, labels, group["preview"])):
            how = f" · similarity {similar[k]:.2f} with row {rows[0]}" if similar and k else ""
            st.markdown(f"**Row {row}** · `{_label(lab)}`{how}")
            st.text(text + ("…" if len(text) >= 160 else ""))
            if differs and differs[k]:
                st.caption(f"first difference from row {rows[0]} (normalised words): {differs[k]}")


def show(
    path,
    text_col: str,
    label_col: str,
    label_sep: str | None = None,
    already_shown: set[str] = frozenset(),
    label_columns=None,
    sheet: str | None = None,
) -> None:
    """The 'Duplicate letters' section; `already_shown`: warning texts the validation report displayed already;
    `label_columns`: the 0/1 columns of a multi-label file (one per label), when its labels are read that way; `sheet`:
    the workbook's sheet."""
    st.subheader("Duplicate letters")
    threshold = st.slider(
        "Near-duplicate threshold (Jaccard similarity of 5-word shingles)",
        0.5,
        1.0,
        0.8,
        0.05,
        key="near-threshold",
        help="Two letters are near-copies when this share of their 5-word sequences is common to both (after lower-casing "
        "and collapsing spacing and punctuation). Lower finds more, and more loosely related, letters.",
    )
    try:
        s = _summary(str(path), text_col, label_col, label_sep, float(threshold), tuple(label_columns or ()), sheet)
    except ClinBenchError as exc:
        st.error(f"Duplicates: {exc}")
        return
    exact, near, clash = s["exact"], s["near"], s["conflicts"]
    c1, c2, c3 = st.columns(3)
    c1.metric("Exact-copy groups", exact["n_groups"], help="Letters identical once case, spacing and punctuation are ignored.")
    c1.caption(f"{exact['n_letters_in_groups']} of {s['n_letters']} letters; largest group {exact['largest']}")
    c2.metric(f"Near-copy groups at {threshold:.2f}", near["n_groups"], help="Exact copies count as near copies too.")
    c2.caption(f"{near['n_groups_beyond_exact']} beyond exact copies; {near['n_letters_in_groups']} letters; largest {near['largest']}")
    c3.metric("Label conflicts", clash["n_groups"], help="Groups of exact copies whose letters carry different labels.")
    c3.caption(f"{clash['n_letters']} letters in them")
    st.caption(
        "Exact copies always form one group, kept whole in one split and one fold, so no letter is tested on after "
        "training on its copy. Near-copies join the first letter of their group when within the threshold of it (no chaining "
        "through intermediate letters), so templated letters do not merge into one giant group."
    )
    for text in s["warnings"]:
        if text not in already_shown:
            st.warning(text)
    if clash["n_groups"]:
        n = clash["n_groups"]
        st.markdown(f"**Label conflicts** ({n} group{'s' if n > 1 else ''}{', the first 20 shown' if n > 20 else ''})")
        table = pd.DataFrame(
            {
                "rows": [", ".join(map(str, g["row_numbers"])) for g in clash["groups"]],
                "labels": [" vs ".join(dict.fromkeys(map(_label, g["labels"]))) for g in clash["groups"]],
            }
        )
        st.dataframe(table, hide_index=True, width="stretch")
    if exact["examples"] or near["examples"]:
        st.markdown("**Example groups** (largest first)")
    for group in exact["examples"]:
        _group("Exact copies", group)
    for group in near["examples"]:
        _group(f"Near copies (≥ {threshold:.2f})", group)
