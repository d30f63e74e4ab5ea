"""Export: every chart of a comparison as PNG, SVG or interactive HTML, every table as CSV, and one report (zip)."""

from __future__ import annotations

import streamlit as st

from engine import api
from engine.errors import ClinBenchError
from ui import common, compare, multilabel, report

common.page("Export", "Charts for a paper or a meeting: PNG (2x), SVG, interactive HTML (opens offline); tables as CSV.")
evals, ds = common.pick_evaluations("export")
if not evals:
    st.info("Nothing to export yet: finished evaluations appear here (start a run on the Runs page).")
    st.stop()
browser = api.browser_path()
if browser is None:
    st.error(
        "PNG and SVG export needs Chromium, and none was found. Run `bash scripts/setup.sh` (it installs the Debian package "
        "'chromium'), or set BROWSER_PATH to a Chrome/Chromium executable. HTML and CSV downloads work without it."
    )

metric = multilabel.headline_picker("export") if compare.is_multi_label(evals) else None  # the same choice as Compare's
try:
    figs = report.figures(evals, metric=metric)
    tables = report.tables(evals, metric=metric)
except ClinBenchError as exc:
    common.error(exc)
    st.stop()

st.subheader("Report")
st.write(f"One zip with {len(figs)} charts (PNG, SVG, HTML), {len(tables)} tables (CSV), methods.md (the methods section) and report.json.")
if st.button("Build the report", type="primary", disabled=browser is None):
    try:
        with st.spinner("Rendering the charts…"):
            st.session_state["report"] = (
                tuple(e.key for e in evals),
                api.report_zip(
                    figs,
                    {name: compare.split_intervals(df) for name, df in tables.items()},  # a CI as two numbers, as every CSV
                    report.info(evals, ds, metric),
                    documents=report.documents(evals),
                ),
            )
    except ClinBenchError as exc:
        common.error(str(exc))
built = st.session_state.get("report")
if built and built[0] == tuple(e.key for e in evals):
    st.download_button(
        "Download report (zip)",
        built[1],
        file_name="clinbench-report.zip",
        mime="application/zip",
        on_click="ignore",
        key="dl-report",
    )

st.subheader("Charts")
for i, (name, fig) in enumerate(figs.items()):
    with st.expander(name, expanded=i == 0):
        common.chart(fig, name, f"export-{i}")
st.subheader("Tables")
for i, (name, df) in enumerate(tables.items()):
    with st.expander(name):
        common.table(df, name, f"export-t-{i}")
