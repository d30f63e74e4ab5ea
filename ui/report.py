"""The figures and tables of one comparison (a set of evaluations), as the Compare page shows them
and the Export page bundles them. Pure: engine results in, plotly figures and DataFrames out.

Multi-label evaluations: the micro/macro/samples-F1 table and the per-label table replace the macro-F1 and per-class
ones, the per-label heatmap replaces the confusion matrices (they have none), and the significance table tests the
chosen headline (micro-, macro- or samples-F1). Two-label evaluations add their sensitivity/specificity table and the ROC
and precision-recall curves."""

from __future__ import annotations

import pandas as pd

from engine import api
from ui import binary, charts, compare


def _headline(evals: list, metric: str | None) -> str:
    """The comparison's headline: `metric` when the reader chose one, else its task's (api.headline)."""
    return api.headline("multi-label" if compare.is_multi_label(evals) else None, metric)


def tables(evals: list, with_significance: bool = True, metric: str | None = None) -> dict[str, pd.DataFrame]:
    """The comparison's tables; `metric`: the headline the reader chose (None: the task's), what the significance table
    tests."""
    multi = compare.is_multi_label(evals)
    metric = _headline(evals, metric)
    comp = api.comparison_table(evals).sort_values(metric, ascending=False, kind="stable").reset_index(drop=True)
    if multi:
        out = {
            "micro macro samples F1 by model and method": compare.multilabel_score_table(comp),
            "evaluation settings": compare.settings_table(comp),
            "precision recall F1 per label": compare.per_label_table(api.per_class_table(evals)),
        }
    else:
        out = {
            "macro-F1 by model and method": compare.score_table(comp),
            "evaluation settings": compare.settings_table(comp),
            "precision recall by class": compare.per_class_table(api.per_class_table(evals)),
        }
    if binary.is_binary(evals):
        out["sensitivity specificity by model and method"] = binary.figures_table(evals)
    if len(sub := api.subgroup_table(evals)):
        out[f"macro-F1 by {sub['column'].iloc[0]}"] = sub
    if with_significance:
        sig = api.significance(evals, metric)
        if len(sig):
            out["significance of the top models"] = compare.significance_table(sig)
    return out


def learning_curve_figure(comp: pd.DataFrame, metric: str = "macro_f1"):
    """The learning curve of `metric` (macro_f1; a multi-label comparison's headline: micro_f1, macro_f1, samples_f1)."""
    name = "macro-F1" if metric == "macro_f1" else compare.HEADLINES[metric]
    points = compare.learning_curve_points(compare.headline(comp, metric))
    return charts.learning_curve_chart(points, compare.CURVE_TITLE.replace("macro-F1", name), name)


def figures(evals: list, confusion_for: list | None = None, metric: str | None = None) -> dict:
    """The comparison's charts; `metric`: the headline the reader chose (None: the task's; for label sets micro_f1,
    macro_f1 or samples_f1)."""
    comp = api.comparison_table(evals)
    metric = _headline(evals, metric)
    if compare.is_multi_label(evals):
        name = compare.HEADLINES[metric]
        figs = {
            f"{name} by model and method": charts.macro_f1_chart(
                compare.headline(comp, metric), compare.headline_title(metric), name, "most frequent label set"
            ),
            "precision recall F1 per label": charts.per_label_heatmap(api.per_class_table(evals)),
        }
        if compare.has_learning_curve(comp):
            figs["learning curve"] = learning_curve_figure(comp, metric)
        return figs
    figs = {
        "macro-F1 by model and method": charts.macro_f1_chart(comp),
        "per-class F1": charts.per_class_heatmap(api.per_class_table(evals)),
    }
    curves = binary.curve_rows(evals) if binary.is_binary(evals) else []
    if curves:
        figs["ROC curves"], figs["precision-recall curves"] = charts.roc_chart(curves), charts.pr_chart(curves)
    if compare.has_learning_curve(comp):
        figs["learning curve"] = learning_curve_figure(comp)
    if len(sub := api.subgroup_table(evals)):
        figs[f"macro-F1 by {sub['column'].iloc[0]}"] = charts.subgroup_chart(sub)
    for ev in confusion_for if confusion_for is not None else evals:
        if "confusion_matrix" in ev.metrics:  # (multi-label evaluations have none)
            figs[f"confusion matrix {ev.label}"] = charts.confusion_chart(
                ev.metrics["confusion_matrix"], f"Confusion matrix: {ev.label}", ev.repeats
            )
    return figs


def info(evals: list, ds: dict, metric: str | None = None) -> dict:
    """What report.json says about the comparison: the dataset by its name (a saved dataset's, else its file name; never a
    path of this machine: the cache folder is the user's), its data hash, the evaluations and the headline."""
    key = _headline(evals, metric)
    name = ds.get("name") or str(ds["source"]).replace("\\", "/").rsplit("/", 1)[-1]
    return {"dataset": name, "data_hash": ds["data_hash"], "evaluations": [e.key for e in evals], "headline": key}


def documents(evals: list) -> dict[str, str]:
    """The report's text files: methods.md, the methods section written from the manifests (engine.api.methods_markdown)."""
    return {"methods.md": api.methods_markdown(evals)}
