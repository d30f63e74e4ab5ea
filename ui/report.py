"""The figures and tables of one comparison (a set of evaluations), as the Compare page shows them
and the Export page bundles them. Pure: engine results in, plotly figures and DataFrames out."""

from __future__ import annotations

import pandas as pd

from engine import results
from ui import charts


def tables(evals: list[results.Evaluation], with_significance: bool = True) -> dict[str, pd.DataFrame]:
    comp = results.comparison_table(evals)
    out = {"macro-F1 by model and method": comp, "precision recall by class": results.per_class_table(evals)}
    if with_significance:
        sig = results.significance(evals)
        if len(sig):
            out["significance of the top models"] = sig
    return out


def figures(evals: list[results.Evaluation], confusion_for: list[results.Evaluation] | None = None) -> dict:
    comp = results.comparison_table(evals)
    figs = {
        "macro-F1 by model and method": charts.macro_f1_chart(comp),
        "per-class F1": charts.per_class_heatmap(results.per_class_table(evals)),
    }
    for ev in confusion_for if confusion_for is not None else evals:
        figs[f"confusion matrix {ev.label}"] = charts.confusion_chart(ev.metrics["confusion_matrix"], f"Confusion matrix: {ev.label}")
    return figs
