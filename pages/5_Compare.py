"""Compare: macro-F1 with 95% CI for every model x method (with the protocol and letters behind each figure), the
learning curve when the evaluations hold several training sizes, precision/recall, calibration with a reliability diagram,
per-class F1, confusion matrices, whether the models differ on the letters they share, and the letters behind the figures:
those one evaluation got wrong, those on which models disagree."""

from __future__ import annotations

import streamlit as st

from engine import api
from engine.errors import ClinBenchError
from ui import binary, calibration, charts, common, compare, external, multilabel, report, review

common.page(
    "Compare",
    "Scores on the letters each evaluation scored: cv = cross-validation (every letter scored once per repeat, on folds it "
    "was not trained on), holdout = one held-out test split. Choose the dataset and run in the sidebar.",
)
evals, ds = common.pick_evaluations("compare")
if not evals:
    st.info("No finished evaluations yet. Start a run on the Runs page (or the home page's button); results appear here as steps finish.")
    st.stop()

comp = api.comparison_table(evals)
multi = compare.is_multi_label(evals)  # several labels per letter: three F1 scores, per-label views, no confusion matrix
st.caption(
    f"{len(evals)} evaluation(s) on {ds['n_letters']} letters ({compare.protocol_counts(comp)}), labels: {', '.join(ds['classes'])}"
    + (" (several labels per letter, or none)." if multi else ".")
)
metric = multilabel.headline_picker("compare") if multi else api.headline(None)  # the one headline (engine.evaluation.headline)
comp = comp.sort_values(metric, ascending=False, kind="stable").reset_index(drop=True)  # best first by the headline, everywhere
if multi:
    fig = charts.macro_f1_chart(
        compare.headline(comp, metric), compare.headline_title(metric), compare.HEADLINES[metric], "most frequent label set"
    )
    common.chart(fig, f"{compare.HEADLINES[metric]} by model and method", "f1")
else:
    common.chart(charts.macro_f1_chart(comp, title=compare.CHART_TITLE), "macro-F1 by model and method", "f1")
if compare.has_learning_curve(comp):  # evaluations at more than one training size (the option learning_curve)
    st.subheader("Learning curve")
    common.chart(report.learning_curve_figure(comp, metric), "learning curve", "curve")
    st.caption(compare.CURVE_NOTE)

st.subheader("Micro-, macro- and samples-F1" if multi else "Precision and recall")
if multi:
    common.table(compare.multilabel_score_table(comp), "micro macro samples F1 by model and method", "comp")
else:
    common.table(compare.score_table(comp), "macro-F1 by model and method", "comp")
st.caption(compare.ML_SCORE_NOTE if multi else compare.SCORE_NOTE)
if binary.is_binary(evals):  # two labels: sensitivity, specificity, PPV, NPV, AUCs with CIs; ROC and PR curves
    binary.compare_section(evals)
calibration.compare_section(evals)  # Brier, ECE (two labels: intercept, slope) with CIs; the reliability diagram
with st.expander("Settings and keys of each evaluation"):
    common.table(compare.settings_table(comp), "evaluation settings", "settings")
spread = api.seed_spread(evals, metric)
if len(spread):
    name = compare.HEADLINES[metric]
    st.markdown(f"**Across seeds** (runs with n_seeds > 1): the spread of {name} next to the width of its 95% CI")
    common.table(spread.round(4), f"{name} across seeds", "seeds")
per_class = api.per_class_table(evals)
if multi:
    multilabel.per_label_section(per_class)
else:
    with st.expander("Per class: precision, recall, F1, letters"):
        common.table(compare.per_class_table(per_class), "precision recall by class", "perclass")
        st.caption(compare.LETTERS_ONCE.strip())
    st.subheader("Per-class F1")
    common.chart(charts.per_class_heatmap(per_class), "per-class F1", "heat")

st.subheader("Are the models different?")
sig = None
try:
    with st.spinner("Comparing the models on the letters they share…"):
        sig = api.significance(evals, metric)
except ClinBenchError as exc:
    common.error(exc, "Significance")
if sig is not None and len(sig):
    st.write(compare.SIGNIFICANCE_INTRO + (compare.ML_PAIRED_NOTE if multi else ""))
    for line in compare.verdict_lines(sig):
        st.markdown(line)
    st.caption(compare.family_caption(sig))
    common.table(compare.significance_table(sig), "significance of the models", "sig")
elif sig is not None:
    st.caption("Needs at least two evaluations of this dataset scored on the same letters (the same folds or test split).")
review.subgroup_section(evals)  # evaluations scored with a subgroup column: macro-F1 per subgroup, the best-worst gap
review.methods_download(evals)

st.subheader("The letters behind the figures")
labels = [e.label for e in evals]
by_label = {e.label: e for e in evals}
letters = common.letters_in_downloads("compare")
with st.expander("Letters with a wrong label set" if multi else "Misclassified letters"):
    common.from_url("wrong", list(comp["evaluation"]), "compare-wrong")
    chosen = st.selectbox("Evaluation", list(comp["evaluation"]), key="compare-wrong")  # best first
    common.to_url("wrong", chosen)
    try:
        wrong = api.misclassified(by_label[chosen])
    except ClinBenchError as exc:
        common.error(exc, "Misclassified letters")
    else:
        st.caption(compare.letters_caption(wrong, by_label[chosen], "misclassified"))
        common.table(compare.letters_table(wrong), f"misclassified {chosen}", "wrong", letters, column_config=compare.LETTER_COLUMNS)
with st.expander("Letters where the models disagree"):
    default = compare.compared_labels(sig, labels)
    common.from_url("disagree", labels, "compare-disagree", many=True)
    picked = st.multiselect(
        "Evaluations", labels, default=None if "compare-disagree" in st.session_state else default, key="compare-disagree"
    )
    common.to_url("disagree", picked)
    if len(picked) < 2:
        st.caption("Choose at least two evaluations.")
    else:
        try:
            differ = api.disagreements([by_label[lab] for lab in picked])
        except ClinBenchError as exc:
            common.error(exc, "Disagreements")
        else:
            st.caption(compare.letters_caption(differ, by_label[picked[0]], "disagree"))
            common.table(
                compare.letters_table(differ), "letters where models disagree", "disagree", letters, column_config=compare.LETTER_COLUMNS
            )

if multi:  # no confusion matrix for label sets (the per-label heatmap above stands in for it)
    external.external_validation(evals)
    st.stop()
st.subheader("Confusion matrices")
common.from_url("cm", labels, "compare-cm", many=True)
picked = st.multiselect("Evaluations", labels, default=None if "compare-cm" in st.session_state else labels[:2], key="compare-cm")
common.to_url("cm", picked)
cols = st.columns(2)
for i, lab in enumerate(picked):
    ev = by_label[lab]
    with cols[i % 2]:
        common.chart(
            charts.confusion_chart(ev.metrics["confusion_matrix"], f"Confusion matrix: {lab}", ev.repeats),
            f"confusion matrix {lab}",
            f"cm-{ev.key}",
        )
st.caption(compare.CONFUSION_NOTE)

external.external_validation(evals)
