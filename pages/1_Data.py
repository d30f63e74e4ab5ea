"""Data: upload letters, choose columns, read the validation report, save; saved datasets and the default."""

from __future__ import annotations

import streamlit as st

from engine import api
from engine.errors import ClinBenchError
from ui import charts, common, datasets, duplicates, forms, multilabel

common.page(
    "Data",
    "Upload a CSV, TSV, JSONL, JSON or Excel (.xlsx) file with one letter per row, name the text and label columns, and save it. "
    "Files stay in this machine's cache folder.",
)


def upload_section(upload) -> None:
    """The uploaded file: columns, validation report, scoring preview, save (returns early when it cannot be read)."""
    read = datasets.read_upload(upload)
    if read is None:
        return
    path, table, sheet, guess_text, guess_label = read
    columns = [str(c) for c in table.columns]
    st.write(f"**{upload.name}**: {len(table)} rows, columns {', '.join(f'`{c}`' for c in columns)}.")
    c1, c2, c3 = st.columns(3)
    text_col = c1.selectbox("Text column", columns, index=columns.index(guess_text))
    label_col = c2.selectbox("Label column", columns, index=columns.index(guess_label))
    sep = c3.text_input(
        "Label separator (several labels per letter)", "", help="Leave empty for one label per letter (or a JSON list of labels), e.g. '|'."
    )
    label_cols = st.multiselect(
        "…or label columns: one 0/1 column per label (several labels per letter; the label column is then ignored)",
        [c for c in columns if c != text_col],
        key="label-columns",
    )
    more = forms.data_option_widgets(columns) | ({"label_columns": label_cols} if label_cols else {}) | ({"sheet": sheet} if sheet else {})
    report = api.validate_file(path, text_col, label_col, label_sep=sep or None, **more)
    st.subheader("Validation report")
    choice = (
        upload.name,
        text_col,
        label_col,
        sep,
        tuple(sorted(more.items())),
    )  # errors wait until the user confirms the (guessed) columns
    checked = report.ok or st.session_state.get("data_checked") == choice
    if not checked:
        st.info(
            f"{len(report.errors)} problem(s) with these columns. Check that the text and label columns above are the "
            "right ones (they were guessed), then press the button to see what to fix."
        )
        if st.button("Check these columns", type="primary"):
            st.session_state["data_checked"] = choice
            st.rerun()
    for issue in report.errors if checked else []:
        st.error(issue.message)
    for issue in report.warnings:
        st.warning(issue.message)
    if report.ok:
        st.success(
            f"{report.n_rows} rows, {len(report.class_counts)} labels: ready to use."
            + (
                " Several labels per letter (multi-label): methods svc, logreg and the tf-idf reference accept it."
                if report.multi_label
                else ""
            )
        )
    if report.class_counts:
        common.chart(
            charts.class_distribution(report.class_counts, f"Letters per label in {upload.name}"), f"labels {upload.name}", "upload-dist"
        )
    multilabel.data_summary(report, upload.name)  # several labels per letter: labels per letter, no label, co-occurrence
    if report.duplicates is not None:  # the columns exist: duplicate groups, near-copies, label conflicts
        duplicates.show(path, text_col, label_col, sep or None, {i.message for i in report.warnings}, label_cols, sheet)
    if report.ok:
        st.subheader("How these letters would be scored")
        c1, c2, c3 = st.columns(3)
        protocols = ["fixed"] * ("split_column" in more) + ["auto", "cv", "holdout"]
        protocol = c1.selectbox("Protocol", protocols, help="auto: cross-validation under 500 letters; fixed: the split column's")
        folds = c2.number_input("Folds (cv)", 2, 20, 5)
        seed = c3.number_input("Seed", 0, 10_000, 0)
        try:
            ds = api.load_dataset(path, text_col, label_col, label_sep=sep or None, **more)
            pv = api.protocol_preview(ds, {"protocol": protocol, "cv_folds": int(folds), "seed": int(seed)})
            st.markdown(f"**{pv['protocol']}**: {pv['reason']}")
            for w in pv["warnings"]:
                st.warning(w)
            st.dataframe(pv["classes"], hide_index=True, width="content")
        except ClinBenchError as exc:
            common.error(exc, "Protocol")
        name = st.text_input("Dataset name", upload.name.rsplit(".", 1)[0])
        if st.button("Save dataset", type="primary"):
            try:
                saved = api.save_dataset(path, name, text_col, label_col, sep or None, **more)
                st.success(f"Saved '{saved.name}' ({saved.n_letters} letters). The Runs page has it chosen.")
                st.session_state["saved-dataset"] = saved.id  # the Runs form starts on it
                common.page_link("pages/3_Runs.py", "Compare models on these letters →")
            except ClinBenchError as exc:
                common.error(exc, "Not saved")
    elif checked:
        st.info("Fix the errors above in the file and upload it again, or choose other columns. Nothing was saved.")


upload = st.file_uploader("Letters file", type=datasets.UPLOAD_TYPES, key="upload")
if upload is not None:
    upload_section(upload)
st.divider()
datasets.saved_list()
st.subheader("Bundled default dataset")


@st.cache_data(show_spinner=False)
def _default_counts() -> dict:
    return api.default_dataset().report.class_counts


st.write("600 MTSamples letters (CC0), 120 from each of five specialties; the text is the transcription only.")
common.chart(
    charts.class_distribution(_default_counts(), "Letters per label in the default dataset"), "labels default dataset", "default-dist"
)
