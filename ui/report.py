"""The figures and tables of one comparison (a set of evaluations), as the Compare page shows them
and the Export page bundles them. Pure: engine results in, plotly figures and DataFrames out."""

from __future__ import annotations

import pandas as pd

from engine import api
from ui import charts, compare


def tables(evals: list, with_significance: bool = True) -> dict[str, pd.DataFrame]:
    comp = api.comparison_table(evals)
    out = {
        "macro-F1 by model and method": compare.score_table(comp),
        "evaluation settings": compare.settings_table(comp),
        "precision recall by class": compare.per_class_table(api.per_class_table(evals)),
    }
    if with_significance:
        sig = api.significance(evals)
        if len(sig):
            out["significance of the top models"] = compare.significance_table(sig)
    return out


def figures(evals: list, confusion_for: list | None = None) -> dict:
    comp = api.comparison_table(evals)
    figs = {
        "macro-F1 by model and method": charts.macro_f1_chart(comp),
        "per-class F1": charts.per_class_heatmap(api.per_class_table(evals)),
    }
    if compare.has_learning_curve(comp):
        figs["learning curve"] = charts.learning_curve_chart(compare.learning_curve_points(comp), compare.CURVE_TITLE)
    for ev in confusion_for if confusion_for is not None else evals:
        figs[f"confusion matrix {ev.label}"] = charts.confusion_chart(ev.metrics["confusion_matrix"], f"Confusion matrix: {ev.label}")
    return figs
