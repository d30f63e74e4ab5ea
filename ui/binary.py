"""Two-label evaluations on the pages (one label is the positive one, e.g. refer or not): the Compare page's clinical
figures (sensitivity, specificity, PPV, NPV, ROC-AUC, PR-AUC with 95% CIs, the positive label and the operating threshold)
and ROC / precision-recall curves with each evaluation's operating point; the Classify page's probability of the positive
label against each classifier's threshold. Evaluations of two labels made before these figures were recorded (no task
"binary", or missing keys) are named, not drawn."""

from __future__ import annotations

import pandas as pd
import streamlit as st

from ui import charts, common

FIGURES = {"sensitivity": "Sensitivity", "specificity": "Specificity", "ppv": "PPV", "npv": "NPV", "roc_auc": "ROC-AUC", "pr_auc": "PR-AUC"}
NOTE = (
    "The positive label is the one the task looks for (the option positive_label, else the rarer label). Sensitivity: of "
    "the letters carrying it, the share given it; specificity: of the others, the share not given it; PPV: of the letters "
    "given it, the share carrying it; NPV: of the letters not given it, the share without it. These four are read at the "
    "threshold on P(positive label), chosen on training letters only by the rule shown (under cv: the mean of the folds' "
    "thresholds; 'most probable label': a method that chooses none, so 0.5). ROC-AUC and PR-AUC (average precision) "
    "score the probabilities at every threshold. CIs: 95% bootstrap over duplicate groups."
)
CURVES_NOTE = (
    "Each line: the evaluation's pooled out-of-sample probabilities of the positive label at every threshold; the dot: "
    "where its threshold puts it. Moving the threshold along the line trades sensitivity for specificity (ROC) or PPV (PR). "
    "PR curves show more when the positive label is rare: the dotted line is a classifier guessing at random."
)
CLASSIFY_NOTE = (
    "**Two labels**: each classifier gives the positive label when its probability reaches the classifier's threshold "
    "(chosen on training letters), which need not be 0.5: the label given can differ from the more probable one."
)


def is_binary(evals: list) -> bool:
    """Whether any of the evaluations carries the figures of a two-label task (metrics task "binary")."""
    return any(_binary(e) for e in evals)


def _binary(e) -> bool:
    return (e.metrics or {}).get("task") == "binary"


def _interval(ci) -> str:
    if not isinstance(ci, (list, tuple)) or len(ci) < 2 or ci[0] is None or ci[1] is None or pd.isna(ci[0]) or pd.isna(ci[1]):
        return ""
    return f"{ci[0]:.3f}–{ci[1]:.3f}"


def _value(m: dict, name: str, digits: int | None = 3) -> float | None:
    v = m.get(name)
    return None if v is None or pd.isna(v) else round(float(v), digits) if digits else float(v)


def rule_text(m: dict) -> str:
    """'best-f1', 'sensitivity ≥ 0.9', 'specificity ≥ 0.95', 'most probable label'; '' when not recorded."""
    rule, target = m.get("threshold_rule"), m.get("threshold_target")
    if not rule:
        return ""
    return f"{rule} ≥ {target:g}" if rule in ("sensitivity", "specificity") and target is not None else str(rule)


def threshold_text(m: dict) -> str:
    """The operating threshold to 3 decimals (with the folds' range under cv), '' when not recorded."""
    t, folds = m.get("threshold"), [f for f in m.get("fold_thresholds") or [] if f is not None]
    if t is None:
        return ""
    text = f"{t:.3f}"
    return text + (f" (folds {min(folds):.3f}–{max(folds):.3f})" if len(folds) > 1 and max(folds) > min(folds) else "")


def figures_table(evals: list) -> pd.DataFrame:
    """One row per two-label evaluation (best ROC-AUC first): the positive label, sensitivity, specificity, PPV, NPV,
    ROC-AUC and PR-AUC each with its 95% CI, the threshold and its rule, the letters scored. Keys an evaluation lacks
    stay empty."""
    rows = []
    for e in evals:
        m = e.metrics or {}
        if not _binary(e):
            continue
        row = {"Evaluation": e.label, "Positive label": m.get("positive_label") or ""}
        for name, header in FIGURES.items():
            row[header], row[f"{header} 95% CI"] = _value(m, name), _interval(m.get(f"{name}_ci"))
        row |= {
            "Threshold": threshold_text(m),
            "Threshold rule": rule_text(m),
            "Scored on": f"{e.protocol} · {m.get('n_scored', m.get('n_test'))} letters",
        }
        rows.append(row)
    figures = [h for f in FIGURES.values() for h in (f, f"{f} 95% CI")]
    df = pd.DataFrame(rows, columns=["Evaluation", "Positive label", "Threshold", "Threshold rule", *figures, "Scored on"])
    return df.sort_values("ROC-AUC", ascending=False, kind="stable", na_position="last").reset_index(drop=True)


def _prevalence(m: dict) -> float | None:
    """The share of scored letters carrying the positive label (from the per-class supports)."""
    per, pos = m.get("per_class") or {}, m.get("positive_label")
    total = sum((v or {}).get("support") or 0 for v in per.values())
    return (per.get(pos) or {}).get("support", 0) / total if pos in per and total else None


def curve_rows(evals: list) -> list[dict]:
    """The curves of the two-label evaluations that stored them, as ui.charts.roc_chart / pr_chart read them: evaluation,
    fpr, tpr, recall, precision, the AUCs, the operating point (sensitivity, specificity, PPV), its threshold, the prevalence."""
    out = []
    for e in evals:
        m = e.metrics or {}
        c = m.get("curves") if _binary(e) else None
        roc, pr = (c or {}).get("roc") or {}, (c or {}).get("pr") or {}
        if not roc.get("fpr") or not pr.get("recall"):
            continue
        out.append(
            {
                "evaluation": e.label,
                "fpr": roc["fpr"],
                "tpr": roc["tpr"],
                "recall": pr["recall"],
                "precision": pr["precision"],
                **{k: _value(m, k, None) for k in ("roc_auc", "pr_auc", "sensitivity", "specificity", "ppv")},
                "threshold_text": threshold_text(m) or "?",
                "prevalence": _prevalence(m),
            }
        )
    return out


def compare_section(evals: list) -> None:
    """Compare: the clinical figures of the two-label evaluations, their ROC and precision-recall curves (exportable)."""
    st.subheader("Two labels: sensitivity, specificity, PPV, NPV, ROC-AUC, PR-AUC")
    table = figures_table(evals)
    positives = sorted(set(table["Positive label"]) - {""})
    if positives:
        st.markdown(
            f"Positive label: **{' / '.join(positives)}**" + (" (the evaluations differ: read each row's)" if len(positives) > 1 else "")
        )
    common.table(table, "sensitivity specificity by model and method", "binary")
    st.caption(NOTE)
    older = [e.label for e in evals if not _binary(e)]
    if older:
        st.caption(f"Made before two-label figures were recorded (run them again to get them): {', '.join(older)}.")
    curves = curve_rows(evals)
    if not curves:
        return
    c1, c2 = st.columns(2)
    with c1:
        common.chart(charts.roc_chart(curves), "ROC curves", "roc")
    with c2:
        common.chart(charts.pr_chart(curves), "precision-recall curves", "pr")
    st.caption(CURVES_NOTE)


def classify_answers(rows: list[dict], evals: list) -> None:
    """Classify: two-label classifiers with an operating threshold (engine.predict rows of task "binary"): the letter's
    probability of the positive label against each classifier's threshold, and the label that gives."""
    ok = [r for r in rows if not r.get("error") and r.get("task") == "binary" and r.get("threshold") is not None]
    if not ok:
        return
    by_key = {e.key: e.metrics or {} for e in evals}
    st.markdown(CLASSIFY_NOTE)
    common.chart(charts.threshold_chart(ok), "probability against threshold", "binary-answers-chart")
    table = pd.DataFrame(
        [
            {
                "Classifier": r["evaluation"],
                "Positive label": r["positive_label"],
                "P(positive)": round(r["p_positive"], 4),
                "Threshold": round(r["threshold"], 4),
                "Threshold rule": rule_text(by_key.get(r.get("key"), {})),
                "Label given": r["predicted"],
            }
            for r in ok
        ]
    )
    common.table(table, "probability of the positive label and threshold", "binary-answers")
