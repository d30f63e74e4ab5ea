"""Compare: macro-F1 with 95% CI for every model x method, precision/recall, per-class F1,
confusion matrices, and whether the top models differ significantly on the same test letters."""

from __future__ import annotations

import streamlit as st

from engine import api
from engine.errors import ClinBenchError
from ui import charts, common

common.page("Compare", "Scores on the held-out test letters. Choose the dataset and run in the sidebar.")
evals, ds = common.pick_evaluations("compare")
if not evals:
    st.info("No finished evaluations yet. Start a run on the Runs page (or the home page's button); results appear here as steps finish.")
    st.stop()

st.caption(f"{len(evals)} evaluation(s) on {ds['n_letters']} letters, labels: {', '.join(ds['classes'])}.")
comp = api.comparison_table(evals)
common.chart(charts.macro_f1_chart(comp), "macro-F1 by model and method", "f1")

st.subheader("Precision and recall")
common.table(
    comp[
        [
            "evaluation",
            "macro_f1",
            "ci_low",
            "ci_high",
            "macro_precision",
            "macro_recall",
            "accuracy",
            "baseline_macro_f1",
            "n_test",
            "pooling",
            "max_length",
            "smote",
        ]
    ].round(4),
    "macro-F1 by model and method",
    "comp",
)
per_class = api.per_class_table(evals)
with st.expander("Per class: precision, recall, F1, support"):
    common.table(per_class.round(4), "precision recall by class", "perclass")

st.subheader("Per-class F1")
common.chart(charts.per_class_heatmap(per_class), "per-class F1", "heat")

st.subheader("Are the top models different?")
try:
    with st.spinner("Paired bootstrap on the shared test letters…"):
        sig = api.significance(evals)
except ClinBenchError as exc:
    common.error(exc, "Significance")
    sig = None
if sig is not None and len(sig):
    st.write(
        "The best evaluation against the next ones, on the same test letters: paired bootstrap of the macro-F1 difference "
        "(2,000 resamples; p-values Holm-adjusted over the comparisons) and McNemar's exact test on accuracy."
    )
    for _, r in sig.iterrows():
        verdict = "**significant**" if r["significant"] else "not significant"
        st.markdown(
            f"- {r['best']} vs {r['other']}: difference {r['difference']:+.3f} (95% CI {r['diff_ci_low']:+.3f} to "
            f"{r['diff_ci_high']:+.3f}, unadjusted), p = {r['p_holm']:.3g} (Holm), McNemar p = {r['p_mcnemar']:.3g} — {verdict} at 0.05."
        )
    common.table(sig.round(4), "significance of the top models", "sig")
elif sig is not None:
    st.caption("Needs at least two evaluations on the same test split.")

st.subheader("Confusion matrices")
labels = [e.label for e in evals]
picked = st.multiselect("Evaluations", labels, default=labels[: min(2, len(labels))])
cols = st.columns(2)
for i, lab in enumerate(picked):
    ev = next(e for e in evals if e.label == lab)
    with cols[i % 2]:
        common.chart(
            charts.confusion_chart(ev.metrics["confusion_matrix"], f"Confusion matrix: {lab}"), f"confusion matrix {lab}", f"cm-{ev.key}"
        )
