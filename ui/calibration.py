"""Compare's calibration section: each evaluation's Brier score and expected calibration error (for two labels also the
calibration intercept and slope) with their 95% CIs, and the reliability diagram of the chosen evaluations. The figures
come from the stored evaluations (engine.evaluation.calibration); nothing is computed here."""

from __future__ import annotations

import pandas as pd
import streamlit as st

from ui import charts, common

NOTE = (
    "Brier score: mean squared error of the probabilities (0 best; two labels: of P(positive), one label among several: summed "
    "over the classes, label sets: averaged over the labels). ECE: expected calibration error over 10 bins of predicted "
    "probability (0: the probabilities match the observed frequencies). Intercept 0 and slope 1 are ideal; a slope below 1 "
    "means predictions too extreme. 95% CIs resample duplicate groups (docs/evaluation.md)."
)
KINDS = {
    "probability of the positive label": "P(positive)",
    "top-label confidence": "top label",
    "every (letter, label) probability": "each label",
}


def _with_ci(m: dict, name: str) -> str:
    value, ci = m.get(name), m.get(f"{name}_ci")
    if value is None or value != value:
        return ""
    return f"{value:.3f}" + (f" ({ci[0]:.3f} to {ci[1]:.3f})" if ci else "")


def figures_table(evals: list) -> pd.DataFrame:
    """One row per evaluation that recorded calibration: Brier, ECE, intercept and slope (two labels), each with its CI."""
    rows = []
    for e in evals:
        m = e.metrics
        if "brier" not in m:
            continue
        row = {"Evaluation": e.label, "Binned": KINDS.get(m.get("calibration_kind"), ""), "Brier (95% CI)": _with_ci(m, "brier")}
        row["ECE (95% CI)"] = _with_ci(m, "ece")
        if "calibration_slope" in m:
            row["Intercept (95% CI)"] = _with_ci(m, "calibration_intercept")
            row["Slope (95% CI)"] = _with_ci(m, "calibration_slope")
        rows.append(row)
    return pd.DataFrame(rows).fillna("")


def reliability_rows(evals: list) -> list[dict]:
    return [
        {"evaluation": e.label, "kind": KINDS.get(e.metrics.get("calibration_kind"), ""), "bins": e.metrics["calibration_bins"]}
        for e in evals
        if e.metrics.get("calibration_bins")
    ]


def compare_section(evals: list) -> None:
    """Compare: the calibration table and the reliability diagram of the chosen evaluations (exportable)."""
    st.subheader("Calibration: do the probabilities mean what they say?")
    table = figures_table(evals)
    older = [e.label for e in evals if "brier" not in e.metrics]
    if older:
        st.caption(
            f"Stored before calibration was recorded, so without it (a stored evaluation keeps the figures it was made with; "
            f"repeating the step is a cache hit): {', '.join(older)}."
        )
    if table.empty:
        return
    common.table(table, "calibration by model and method", "calibration")
    st.caption(NOTE)
    labels = [r["evaluation"] for r in reliability_rows(evals)]
    common.from_url("reliability", labels, "compare-reliability", many=True)
    default = None if "compare-reliability" in st.session_state else labels[:2]
    picked = st.multiselect("Evaluations in the reliability diagram", labels, default=default, key="compare-reliability")
    common.to_url("reliability", picked)
    rows = [r for r in reliability_rows(evals) if r["evaluation"] in picked]
    if rows:
        common.chart(charts.reliability_chart(rows), "reliability diagram", "reliability")
