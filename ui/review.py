"""What a reviewer asks of a comparison beyond its headline, on the Compare page: the figures per subgroup (a chart with
CIs, the best-worst gap, warnings for small subgroups) and the methods section (methods.md) to download."""

from __future__ import annotations

import streamlit as st

from engine import api
from engine.errors import ClinBenchError
from ui import charts, common


def subgroup_section(evals: list) -> None:
    """The subgroup chart and table of the evaluations scored with a subgroup column (nothing when none was)."""
    table = api.subgroup_table(evals)
    if not len(table):
        return
    column = table["column"].iloc[0]
    st.subheader(f"By {column}")
    common.chart(charts.subgroup_chart(table), f"macro-F1 by {column}", "subgroups")
    for e in evals:
        m = e.metrics
        if m.get("subgroup_gap") is not None:
            lo, hi = m.get("subgroup_gap_ci") or (float("nan"), float("nan"))
            best, worst = m["subgroup_gap_between"]
            st.markdown(
                f"**{e.label}**: {best} − {worst} = {m['subgroup_gap']:+.3f} (95% CI {lo:+.3f} to {hi:+.3f})"
                + (" — the interval excludes 0: a detectable gap." if lo > 0 else " — the interval includes 0: no detectable gap.")
            )
        for w in m.get("subgroup_warnings") or []:
            st.caption(f"{e.label}: {w}")
    with st.expander(f"Figures by {column}"):
        common.table(table.round(4), f"macro-F1 by {column}", "subgroup-table")


def methods_download(evals: list) -> None:
    """A button that writes methods.md (engine.api.methods_markdown) from the shown evaluations' manifests."""
    if st.button("Write the methods section (methods.md)", key="methods-build"):
        try:
            with st.spinner("Writing the methods section from the manifests…"):
                st.session_state["methods-md"] = (tuple(e.key for e in evals), api.methods_markdown(evals))
        except (ClinBenchError, ValueError) as exc:
            common.error(exc, "Methods section")
    kept = st.session_state.get("methods-md")
    if kept and kept[0] == tuple(e.key for e in evals):
        st.download_button("Download methods.md", kept[1], file_name="methods.md", mime="text/markdown", key="methods-dl")
        with st.expander("methods.md"):
            st.markdown(kept[1])
