"""Plotly figures of the dashboard, built from engine tables (never imports streamlit).

Every figure has a title, axis titles and the class names as they are in the data; the same
objects are shown on the pages and exported (engine.export), so a PNG matches the screen.
"""

from __future__ import annotations

import html
import re
import textwrap

import numpy as np
import pandas as pd
import plotly.graph_objects as go

PALETTE = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf"]
FONT = dict(family="Arial, Helvetica, sans-serif", size=13)


def _ci_bar(part: pd.DataFrame) -> dict:
    """A horizontal bar's 95% CI whiskers (ci_low, ci_high around macro_f1) and its value written inside the bar."""
    return dict(
        error_x=dict(
            type="data",
            symmetric=False,
            array=(part["ci_high"] - part["macro_f1"]).clip(lower=0),
            arrayminus=(part["macro_f1"] - part["ci_low"]).clip(lower=0),
            color="#333",
        ),
        text=[f"{v:.3f}" for v in part["macro_f1"]],
        textposition="inside",
        insidetextanchor="start",
    )


def _layout(fig: go.Figure, title: str, height: int | None = None) -> go.Figure:
    fig.update_layout(
        title=dict(text=title, x=0.01, xanchor="left"),
        font=FONT,
        template="plotly_white",
        margin=dict(l=20, r=20, t=60, b=20),
        height=height,
    )
    return fig


def class_distribution(counts: dict[str, int], title: str = "Letters per label") -> go.Figure:
    labels = list(counts)
    fig = go.Figure(
        go.Bar(
            x=[counts[k] for k in labels],
            y=labels,
            orientation="h",
            marker_color=PALETTE[0],
            text=[counts[k] for k in labels],
            textposition="auto",
        )
    )
    fig.update_yaxes(title="label", autorange="reversed", automargin=True)
    fig.update_xaxes(title="letters")
    return _layout(fig, title, height=max(260, 60 + 32 * len(labels)))


def macro_f1_chart(
    table: pd.DataFrame,
    title: str = "Macro-F1 on the scored letters (95% bootstrap CI)",
    name: str = "macro-F1",
    baseline_name: str = "majority baseline",
) -> go.Figure:
    """One bar per model x method with its CI as an error bar; the majority-class baseline as a dashed line. Reads the
    columns macro_f1, ci_low, ci_high, baseline_macro_f1; another score (multi-label micro- or samples-F1: ui.compare.headline
    puts it in those columns) is named by `name`, its baseline by `baseline_name`."""
    t = table.sort_values("macro_f1", ascending=True, kind="stable")
    fig = go.Figure()
    for i, (method, part) in enumerate(t.groupby("method", sort=False)):
        fig.add_trace(
            go.Bar(
                x=part["macro_f1"],
                y=part["evaluation"],
                orientation="h",
                name=method,
                marker_color=PALETTE[i % len(PALETTE)],
                **_ci_bar(part),
                hovertemplate=f"%{{y}}<br>{name} %{{x:.3f}}<extra></extra>",
            )
        )
    if "baseline_macro_f1" in t and t["baseline_macro_f1"].notna().any():
        base = float(t["baseline_macro_f1"].dropna().iloc[0])
        # drawn below the bars, so it never runs through a bar's value written inside it; the legend names it
        fig.add_shape(type="line", x0=base, x1=base, yref="paper", y0=0, y1=1, layer="below", line=dict(dash="dash", color="#888"))
        fig.add_trace(
            go.Scatter(
                x=[None], y=[None], mode="lines", line=dict(dash="dash", color="#888"), name=f"{baseline_name} {base:.2f}", hoverinfo="skip"
            )
        )
    fig.update_xaxes(
        title=f"{name} " + ("(pooled over the scored letters)" if name == "macro-F1" else "on the scored letters"), range=[0, 1.05]
    )
    fig.update_yaxes(
        title=dict(text="model · method", standoff=14),
        ticksuffix=" ",
        automargin=True,
        categoryorder="array",
        categoryarray=list(t["evaluation"]),
    )
    fig.update_layout(barmode="overlay", legend_title_text="method")
    return _layout(fig, title, height=max(320, 90 + 42 * len(t)))


def subgroup_chart(table: pd.DataFrame, title: str | None = None) -> go.Figure:
    """Macro-F1 with its 95% CI for each subgroup (y) and evaluation (one colour each), from engine.api.subgroup_table;
    a subgroup with too few letters to say much is drawn pale and marked in its label."""
    column = str(table["column"].iloc[0]) if len(table) else "subgroup"
    fig = go.Figure()
    for i, (evaluation, part) in enumerate(table.groupby("evaluation", sort=False)):
        names = [f"{s} (n={n}{', too few' if few else ''})" for s, n, few in zip(part["subgroup"], part["n"], part["too_few"], strict=True)]
        fig.add_trace(
            go.Bar(
                x=part["macro_f1"],
                y=names,
                orientation="h",
                name=evaluation,
                marker_color=PALETTE[i % len(PALETTE)],
                marker_opacity=[0.35 if few else 1.0 for few in part["too_few"]],
                **_ci_bar(part),
                hovertemplate="%{y}<br>macro-F1 %{x:.3f}<extra>" + html.escape(str(evaluation)) + "</extra>",
            )
        )
    fig.update_xaxes(title="macro-F1 on the subgroup's scored letters (95% CI)", range=[0, 1.05])
    fig.update_yaxes(title=dict(text=column, standoff=24), ticksuffix="  ", automargin=True)
    fig.update_layout(barmode="group", legend_title_text="evaluation")
    n_rows = table["subgroup"].nunique() * max(1, table["evaluation"].nunique())
    return _layout(fig, title or f"Macro-F1 by {column}", height=max(320, 90 + 30 * n_rows))


def learning_curve_chart(
    points: pd.DataFrame, title: str = "Learning curve: macro-F1 against training letters per label", name: str = "macro-F1"
) -> go.Figure:
    """The score `name` (macro-F1, or a multi-label headline; 95% CI as error bars) against training letters per label, one
    line per model · method, from ui.compare.learning_curve_points (its `macro_f1` column holds that score): the sizes on a
    log2 axis, 'all' at the mean training letters per label."""
    fig = go.Figure()
    for i, (line, part) in enumerate(points.groupby("line", sort=False)):
        names = ["all" if pd.isna(s) else str(int(s)) for s in part["size"]]
        fig.add_trace(
            go.Scatter(
                x=part["x"],
                y=part["macro_f1"],
                mode="lines+markers",
                name=line,
                line=dict(color=PALETTE[i % len(PALETTE)], width=2),
                marker=dict(size=8),
                error_y=dict(
                    type="data",
                    symmetric=False,
                    array=(part["ci_high"] - part["macro_f1"]).clip(lower=0),
                    arrayminus=(part["macro_f1"] - part["ci_low"]).clip(lower=0),
                    thickness=1.2,
                    width=4,
                ),
                customdata=[[n, float(lo), float(hi), int(k)] for n, lo, hi, k in zip(names, part["ci_low"], part["ci_high"], part["n"])],
                hovertemplate=f"<b>{html.escape(line)}</b><br>%{{customdata[0]}} per label (mean %{{x:.0f}})<br>{name} %{{y:.3f}} "
                "(95% CI %{customdata[1]:.3f}–%{customdata[2]:.3f}), %{customdata[3]} evaluation(s)<extra></extra>",
            )
        )
    sizes = sorted({int(s) for s in points["size"].dropna()})
    alls = sorted({round(x) for x in points.loc[points["size"].isna(), "x"]})
    ticks = [(float(s), str(s)) for s in sizes] + [(float(x), f"all (≈{x})") for x in alls]
    fig.update_xaxes(
        title="training letters per label (log scale)",
        type="log",
        tickmode="array",
        tickvals=[v for v, _ in ticks],
        ticktext=[t for _, t in ticks],
    )
    fig.update_yaxes(title=f"{name} (95% CI)", range=[0, 1.02])
    fig.update_layout(legend_title_text="model · method", hovermode="closest")
    return _layout(fig, title, height=440)


def per_class_heatmap(per_class: pd.DataFrame, metric: str = "f1", title: str = "Per-class F1 on the scored letters") -> go.Figure:
    pivot = per_class.pivot_table(index="evaluation", columns="class", values=metric, aggfunc="first")
    fig = go.Figure(
        go.Heatmap(
            z=pivot.values,
            x=[wrap_label(c) for c in pivot.columns],
            y=list(pivot.index),
            zmin=0,
            zmax=1,
            colorscale="Blues",
            text=np.round(pivot.values, 2),
            texttemplate="%{text}",
            colorbar=dict(title=metric.upper()),
            hovertemplate="%{y}<br>%{x}: %{z:.3f}<extra></extra>",
        )
    )
    fig.update_xaxes(title="label", automargin=True, tickangle=0)
    fig.update_yaxes(title=dict(text="model · method", standoff=14), ticksuffix=" ", automargin=True)
    return _layout(fig, title, height=max(300, 140 + 40 * len(pivot)))


def per_label_heatmap(per_label: pd.DataFrame, title: str = "Per label: precision, recall and F1 on the scored letters") -> go.Figure:
    """Multi-label evaluations: one panel each for precision, recall and F1, a row per label and a column per evaluation
    (what the confusion matrix is for single-label ones: where each evaluation misses or over-calls a label)."""
    from plotly.subplots import make_subplots

    metrics = [("precision", "Precision"), ("recall", "Recall"), ("f1", "F1")]
    labels = list(dict.fromkeys(per_label["class"]))
    evals = list(dict.fromkeys(per_label["evaluation"]))
    fig = make_subplots(rows=1, cols=3, shared_yaxes=True, horizontal_spacing=0.02, subplot_titles=[t for _, t in metrics])
    for i, (metric, _) in enumerate(metrics, start=1):
        pivot = per_label.pivot_table(index="class", columns="evaluation", values=metric, aggfunc="first").reindex(
            index=labels, columns=evals
        )
        fig.add_trace(
            go.Heatmap(
                z=pivot.values,
                x=[wrap_label(e, 14) for e in evals],
                y=[wrap_label(lab, 28) for lab in labels],
                zmin=0,
                zmax=1,
                colorscale="Blues",
                showscale=i == 3,
                text=np.round(pivot.values.astype(float), 2),
                texttemplate="%{text}",
                colorbar=dict(title="score"),
                hovertemplate=f"%{{y}}<br>%{{x}}<br>{metric}: %{{z:.3f}}<extra></extra>",
            ),
            row=1,
            col=i,
        )
    fig.update_xaxes(tickangle=0, automargin=True)
    fig.update_yaxes(autorange="reversed", automargin=True)
    fig.update_yaxes(title="label", row=1, col=1)
    return _layout(fig, title, height=max(320, 170 + 34 * len(labels)))


def wrap_label(label: str, width: int = 12) -> str:
    """A class name over `width` characters broken into lines at spaces, hyphens or slashes (plotly's <br>)."""
    parts = re.split(r"(?<=[-/ ])", str(label))
    lines, line = [], ""
    for part in parts:
        if line and len(line) + len(part) > width:
            lines.append(line)
            line = ""
        line += part
    lines.append(line)
    return "<br>".join(html.escape(x.strip()) for x in lines)


def _count(v: float) -> str:
    return f"{v:.0f}" if float(v).is_integer() else f"{v:.1f}"


def confusion_chart(cm: dict, title: str, repeats: int = 1) -> go.Figure:
    """Confusion matrix (rows: true label, columns: predicted), letters annotated. Each letter counts once: the stored
    matrix counts a letter once per repeat under cv, so its cells are divided by `repeats` (the mean over the repeats) and
    a row adds up to the letters with that label; the colour bar says so."""
    labels, matrix = cm["labels"], np.asarray(cm["matrix"], dtype=float) / max(1, repeats)
    fig = go.Figure(
        go.Heatmap(
            z=matrix,
            x=[html.escape(str(lab)) for lab in labels],  # slanted below the matrix, so long names do not overlap
            y=[wrap_label(lab) for lab in labels],
            colorscale="Blues",
            text=[[_count(v) for v in row] for row in matrix],
            texttemplate="%{text}",
            colorbar=dict(title=dict(text="letters" if repeats <= 1 else f"letters (mean of {repeats} repeats)", side="right")),
            hovertemplate="true %{y}<br>predicted %{x}: %{text} letters<extra></extra>",
        )
    )
    fig.update_xaxes(title="predicted label", automargin=True, tickangle=-35)
    fig.update_yaxes(title=dict(text="true label", standoff=10), autorange="reversed", automargin=True, ticklabelstandoff=6)
    longest = max((len(str(lab)) for lab in labels), default=0)  # the slanted column labels need room below the matrix
    return _layout(fig, title, height=max(360, 160 + 45 * len(labels) + 5 * min(longest, 40)))


def _hover_snippet(text: str, words: int = 25) -> str:
    """The first words of a letter for a hover label, HTML-escaped (a letter's "<b>" or "<script>" stays text)."""
    first = " ".join(text.split()[:words])
    return "<br>".join(html.escape(line) for line in textwrap.wrap(first + (" …" if len(text.split()) > words else ""), 60))


def without_letters(fig: go.Figure) -> go.Figure:
    """A copy of a letter map for download without the letters' words in its hover labels (letter numbers stay)."""
    out = go.Figure(fig)
    out.update_traces(text=None, hovertemplate="<b>%{fullData.name}</b> · row %{customdata[1]}<extra></extra>")
    return out


def umap_scatter(
    coords: np.ndarray,
    colour: list[str],
    texts: list[str],
    title: str,
    colour_title: str,
    order: list[str] | None = None,
    rows: list[int] | None = None,
) -> go.Figure:
    """2-D map, one trace per colour group (so the legend names them); customdata = [letter position, its row number as
    the pages show it (`rows`, ui.numbering.file_row; default: position + 1)]: the position for selection, the row for the hover."""
    shown = np.asarray(rows if rows is not None else np.arange(len(colour)) + 1)
    colour = np.asarray(colour, dtype=object)
    groups = order or sorted(set(colour))
    fig = go.Figure()
    for i, g in enumerate(groups):
        idx = np.flatnonzero(colour == g)
        if not len(idx):
            continue
        grey = g in ("training letter",)
        fig.add_trace(
            go.Scattergl(
                x=coords[idx, 0],
                y=coords[idx, 1],
                mode="markers",
                name=f"{g} ({len(idx)})",
                customdata=np.column_stack([idx, shown[idx]]),
                marker=dict(size=6 if grey else 8, color="#c8c8c8" if grey else PALETTE[i % len(PALETTE)], opacity=0.5 if grey else 0.85),
                text=[_hover_snippet(texts[j]) for j in idx],
                hovertemplate=f"<b>{g}</b> · row %{{customdata[1]}}<br>%{{text}}<extra></extra>",
            )
        )
    fig.update_xaxes(title="UMAP 1", showticklabels=False)
    fig.update_yaxes(title="UMAP 2", showticklabels=False)
    fig.update_layout(legend_title_text=colour_title)
    return _layout(fig, title, height=520)


def scores_chart(rows: list[dict], title: str = "Each classifier's answer") -> go.Figure:
    """Bar per classifier: the probability of its predicted label."""
    ok = [r for r in rows if r.get("predicted")]
    fig = go.Figure(
        go.Bar(
            x=[r["score"] for r in ok],
            y=[r["evaluation"] for r in ok],
            orientation="h",
            text=[f"{r['predicted']} ({r['score']:.2f})" for r in ok],
            textposition="auto",
            marker_color=PALETTE[0],
        )
    )
    fig.update_xaxes(title="probability of the predicted label", range=[0, 1.02])
    fig.update_yaxes(title="model · method", automargin=True)
    return _layout(fig, title, height=max(260, 90 + 40 * len(ok)))


def label_probabilities_chart(
    rows: list[dict], title: str = "Each label's probability and threshold (bar: probability, dark when predicted; black tick: threshold)"
) -> go.Figure:
    """Multi-label classifiers (engine.predict rows with `thresholds`): a panel per classifier, a bar per label with its own
    probability (dark: at or above its threshold, so predicted; light: not), its threshold as a black tick."""
    from plotly.subplots import make_subplots

    n, per_row = len(rows), min(3, len(rows))
    n_rows = -(-n // per_row)
    labels = list(rows[0]["scores"])
    fig = make_subplots(
        rows=n_rows,
        cols=per_row,
        shared_yaxes=True,
        horizontal_spacing=0.03,
        vertical_spacing=0.12 if n_rows > 1 else 0.05,
        subplot_titles=[html.escape(_shorten(r["evaluation"], 48)) for r in rows],
    )
    for i, r in enumerate(rows):
        at = dict(row=i // per_row + 1, col=i % per_row + 1)
        probs = [r["scores"].get(lab, 0.0) for lab in labels]
        cuts = [r["thresholds"].get(lab, 0.5) for lab in labels]
        fig.add_trace(
            go.Bar(
                x=probs,
                y=[wrap_label(lab, 28) for lab in labels],
                orientation="h",
                marker_color=[PALETTE[0] if p >= t else "#c6dbef" for p, t in zip(probs, cuts)],
                text=[f"{p:.2f}" for p in probs],
                textposition="inside",
                insidetextanchor="start",
                showlegend=False,
                hovertemplate="%{y}: probability %{x:.3f}<extra></extra>",
            ),
            **at,
        )
        fig.add_trace(
            go.Scatter(
                x=cuts,
                y=[wrap_label(lab, 28) for lab in labels],
                mode="markers",
                marker=dict(symbol="line-ns", size=22, line=dict(width=3, color="#222")),
                name="threshold",
                showlegend=False,
                hovertemplate="%{y}: threshold %{x:.3f}<extra></extra>",
            ),
            **at,
        )
    fig.update_xaxes(range=[0, 1.02], title="probability")
    fig.update_yaxes(autorange="reversed", automargin=True)
    fig.update_annotations(font_size=13)  # the panels' titles
    fig = _layout(fig, title, height=max(300, n_rows * (100 + 30 * len(labels)) + 60))
    fig.update_layout(margin=dict(t=90))
    return fig


def _shorten(text: str, width: int) -> str:
    """A long name cut in the middle (the model's folder and the method both stay readable)."""
    return text if len(text) <= width else text[: width // 2 - 1] + "…" + text[-(width // 2) :]


def cooccurrence_heatmap(co: dict, title: str = "Letters carrying both labels") -> go.Figure:
    """A multi-label dataset's co-occurrence (engine.data.dataset.labels.summary): letters carrying both labels; the diagonal counts
    each label's letters."""
    labels, matrix = co["labels"], [list(map(int, row)) for row in co["matrix"]]
    fig = go.Figure(
        go.Heatmap(
            z=matrix,
            x=[html.escape(str(lab)) for lab in labels],  # slanted below the matrix, so long names do not overlap
            y=[wrap_label(lab, 28) for lab in labels],
            colorscale="Blues",
            text=matrix,
            texttemplate="%{text}",
            colorbar=dict(title="letters"),
            hovertemplate="%{y} and %{x}: %{z} letters<extra></extra>",
        )
    )
    fig.update_xaxes(automargin=True, tickangle=-35)
    fig.update_yaxes(autorange="reversed", automargin=True, ticklabelstandoff=6)
    longest = max((len(str(lab)) for lab in labels), default=0)
    return _layout(fig, title, height=max(340, 160 + 40 * len(labels) + 5 * min(longest, 40)))


def training_curves(metrics: dict[str, list[list[float]]], title: str = "Training curves") -> go.Figure:
    """Curves logged while a step trains, against the optimiser step: losses on the left axis, validation scores
    (macro-F1, perplexity, ...) on the right one; the training loss as a line, per-epoch values as markers."""
    fig = go.Figure()
    right = [name for name in metrics if "loss" not in name]
    for i, (name, points) in enumerate(sorted(metrics.items(), key=lambda kv: (kv[0] != "train_loss", kv[0]))):
        steps, values = [p[0] for p in points], [p[1] for p in points]
        fig.add_trace(go.Scatter(
            x=steps, y=values, name=name.replace("_", " "), mode="lines" if name == "train_loss" else "lines+markers",
            line=dict(color=PALETTE[i % len(PALETTE)], width=2 if name == "train_loss" else 1.5, dash=None if name in ("train_loss",) or name in right else "dot"),
            yaxis="y2" if name in right else "y", hovertemplate=f"{name} %{{y:.4f}} at step %{{x}}<extra></extra>"))  # fmt: skip
    fig.update_xaxes(title="optimiser step")
    fig.update_layout(yaxis=dict(title="loss"), legend=dict(orientation="h", y=-0.25))
    if right:
        scores = all("f1" in n or "accuracy" in n for n in right)  # bounded in [0, 1]: a fixed axis, so one point reads right
        fig.update_layout(
            yaxis2=dict(
                title=" / ".join(n.replace("_", " ") for n in right),
                overlaying="y",
                side="right",
                showgrid=False,
                tickformat=".3~f",
                **({"range": [0, 1.02], "tickmode": "array", "tickvals": [0, 0.25, 0.5, 0.75, 1]} if scores else {"tickmode": "auto"}),
            )
        )
    return _layout(fig, title, height=340)


def _curve(fig: go.Figure, c: dict, i: int, line: tuple, point: tuple | None, hover: str, point_hover: str, auc: str, **kw) -> None:
    """One evaluation's curve (`line`: x and y) in its colour, its AUC in the legend, and its operating point (`point`)."""
    colour, name = PALETTE[i % len(PALETTE)], html.escape(c["evaluation"])
    value = "" if c.get(auc) is None else f" (AUC {c[auc]:.3f})"
    fig.add_trace(
        go.Scatter(
            x=line[0],
            y=line[1],
            mode="lines",
            name=f"{name}{value}",
            legendgroup=name,
            line=dict(color=colour, width=2, shape=kw.get("shape", "linear")),
            hovertemplate=f"<b>{name}</b><br>{hover}<extra></extra>",
        )
    )
    if point is not None:
        fig.add_trace(
            go.Scatter(
                x=[point[0]],
                y=[point[1]],
                mode="markers",
                name=f"{name}: operating point",
                legendgroup=name,
                showlegend=False,
                marker=dict(color=colour, size=12, symbol="circle", line=dict(color="#222", width=1.5)),
                hovertemplate=f"<b>{name}</b> at its threshold {c['threshold_text']}<br>{point_hover}<extra></extra>",
                customdata=kw.get("customdata"),
            )
        )


def roc_chart(curves: list[dict], title: str = "ROC curves of P(positive label), with each operating point") -> go.Figure:
    """Two-label evaluations (ui.binary.curve_rows): one ROC line per evaluation (its ROC-AUC in the legend), its operating
    point at (1 - specificity, sensitivity) as a marker of the same colour, and the chance diagonal."""
    fig = go.Figure()
    fig.add_trace(
        go.Scatter(x=[0, 1], y=[0, 1], mode="lines", name="chance", line=dict(color="#aaa", dash="dash", width=1), hoverinfo="skip")
    )
    for i, c in enumerate(curves):
        known = c.get("sensitivity") is not None and c.get("specificity") is not None
        point = (1 - c["specificity"], c["sensitivity"]) if known else None
        hover, at = "1 - specificity %{x:.3f}<br>sensitivity %{y:.3f}", "sensitivity %{y:.3f}, specificity %{customdata:.3f}"
        _curve(fig, c, i, (c["fpr"], c["tpr"]), point, hover, at, "roc_auc", customdata=[c.get("specificity")])
    fig.update_xaxes(title="1 - specificity (false-positive rate)", range=[-0.02, 1.02])
    fig.update_yaxes(title="sensitivity (true-positive rate)", range=[-0.02, 1.02])
    return _curves_layout(fig, title, len(curves) + 1)


def pr_chart(curves: list[dict], title: str = "Precision-recall curves of P(positive label), with each operating point") -> go.Figure:
    """Two-label evaluations (ui.binary.curve_rows): one precision-recall line per evaluation (its PR-AUC in the legend), its
    operating point at (sensitivity, PPV), and the share of positive letters (a classifier guessing at random) dotted."""
    fig = go.Figure()
    for i, c in enumerate(curves):
        known = c.get("sensitivity") is not None and c.get("ppv") is not None
        point = (c["sensitivity"], c["ppv"]) if known else None
        hover, at = "recall %{x:.3f}<br>precision %{y:.3f}", "sensitivity %{x:.3f}, PPV %{y:.3f}"
        # recall falls along the curve: each step holds its precision
        _curve(fig, c, i, (c["recall"], c["precision"]), point, hover, at, "pr_auc", shape="hv")
    prevalence = sorted({round(c["prevalence"], 4) for c in curves if c.get("prevalence") is not None})
    if len(prevalence) == 1:
        fig.add_hline(
            y=prevalence[0],
            line=dict(color="#aaa", dash="dot", width=1),
            annotation_text=f"positive letters: {prevalence[0]:.0%}",
            annotation_position="bottom right",
        )
    fig.update_xaxes(title="recall (sensitivity)", range=[-0.02, 1.02])
    fig.update_yaxes(title="precision (PPV)", range=[-0.02, 1.04])
    return _curves_layout(fig, title, len(curves))


def _curves_layout(fig: go.Figure, title: str, n_lines: int) -> go.Figure:
    """ROC / PR layout: a square-ish plot, its legend (one evaluation a line) below it so the plot keeps its width."""
    fig.update_layout(
        legend=dict(title_text="model · method (dot: operating point)", orientation="h", yanchor="top", y=-0.16, x=0, xanchor="left"),
        hovermode="closest",
    )
    return _layout(fig, title, height=470 + 24 * n_lines)


def threshold_chart(rows: list[dict], title: str = "Probability of the positive label against each classifier's threshold") -> go.Figure:
    """Two-label classifiers with an operating threshold (engine.predict rows of task "binary"): a bar per classifier with
    the letter's probability of the positive label (dark: at or above the threshold, so the positive label; light: the
    other label), the threshold as a black tick, and the label given as the bar's text."""
    names = [_shorten(r["evaluation"], 60) for r in rows]
    probs, cuts = [r["p_positive"] for r in rows], [r["threshold"] for r in rows]
    fig = go.Figure(
        go.Bar(
            x=probs,
            y=names,
            orientation="h",
            marker_color=[PALETTE[3] if p >= t else "#c6dbef" for p, t in zip(probs, cuts)],
            text=[
                f"P({r['positive_label']}) {p:.2f} {'≥' if p >= t else '<'} {t:.2f} → {r['predicted']}"
                for r, p, t in zip(rows, probs, cuts)
            ],
            textposition="outside",
            cliponaxis=False,
            name="probability",
            hovertemplate="%{y}: P(positive) %{x:.3f}<extra></extra>",
        )
    )
    fig.add_trace(
        go.Scatter(
            x=cuts,
            y=names,
            mode="markers",
            marker=dict(symbol="line-ns", size=30, line=dict(width=3, color="#222")),
            name="threshold",
            hovertemplate="%{y}: threshold %{x:.3f}<extra></extra>",
        )
    )
    fig.update_xaxes(title="probability of the positive label (black tick: the classifier's threshold)", range=[0, 1.02])
    fig.update_yaxes(title="model · method", autorange="reversed", automargin=True)
    fig.update_layout(showlegend=False)
    return _layout(fig, title, height=max(240, 110 + 50 * len(rows)))


def reliability_chart(rows: list[dict], title: str = "Reliability diagram: predicted probability against observed frequency") -> go.Figure:
    """One line per evaluation (`rows`: {"evaluation", "kind", "bins"}, the bins of engine.evaluation.calibration): each
    non-empty bin's mean predicted probability against the observed frequency, the marker's size and hover giving the
    records in the bin; the diagonal is perfect calibration."""
    fig = go.Figure()
    fig.add_trace(
        go.Scatter(
            x=[0, 1], y=[0, 1], mode="lines", name="perfectly calibrated", line=dict(color="#aaa", dash="dash", width=1), hoverinfo="skip"
        )
    )
    biggest = max((b["n"] for r in rows for b in r["bins"]), default=1) or 1
    for i, r in enumerate(rows):
        bins = r["bins"]
        fig.add_trace(
            go.Scatter(
                x=[b["mean_predicted"] for b in bins],
                y=[b["observed"] for b in bins],
                mode="lines+markers+text",
                name=_shorten(f"{r['evaluation']}, {r['kind']}", 80),
                line=dict(color=PALETTE[i % len(PALETTE)], width=2),
                marker=dict(size=[7 + 18 * (b["n"] / biggest) ** 0.5 for b in bins], color=PALETTE[i % len(PALETTE)]),
                text=[f"{b['n']:g}" for b in bins],
                textposition="top center",
                textfont=dict(size=10, color=PALETTE[i % len(PALETTE)]),
                customdata=[[b["low"], b["high"], b["n"]] for b in bins],
                hovertemplate="bin %{customdata[0]:.1f}-%{customdata[1]:.1f}: %{customdata[2]:g} records<br>"
                "mean predicted %{x:.3f}<br>observed %{y:.3f}<extra></extra>",
            )
        )
    fig.update_xaxes(title="mean predicted probability in the bin", range=[-0.04, 1.04])
    fig.update_yaxes(title="observed frequency in the bin", range=[-0.05, 1.12])
    fig.update_layout(
        legend=dict(title_text="model · method (number: records in the bin)", orientation="h", yanchor="top", y=-0.16, x=0, xanchor="left"),
        hovermode="closest",
    )
    return _layout(fig, title, height=500 + 24 * len(rows))
