"""The Compare page's words and table layouts: which columns to show, the significance verdicts as plain
sentences, captions of the letter tables. Pure: engine tables in, strings and DataFrames out (no streamlit)."""

from __future__ import annotations

import pandas as pd

CHART_TITLE = "Macro-F1 per model and method (95% bootstrap CI over letters)"
SCORE_COLUMNS = [
    "evaluation",
    "macro_f1",
    "ci_low",
    "ci_high",
    "protocol",
    "n_letters",
    "n_scored",
    "fold_sd",
    "macro_precision",
    "macro_recall",
    "accuracy",
    "baseline_macro_f1",
    "n_test",
    "pooling",
    "max_length",
    "smote",
]
SCORE_NOTE = (
    "macro_f1 is pooled over every scored letter and averaged over all classes of the dataset; protocol: cv "
    "(cross-validation) or holdout (one test split); n_letters: letters in the dataset; n_scored: the letters "
    "behind the figure (all of them under cv, the test split under holdout); n_test: predictions scored (letters × repeats under cv); fold_sd: standard deviation of macro-F1 over the folds."
)
SIGNIFICANCE_INTRO = (
    "The best evaluation against the next ones, on the letters and folds they share. Under cv the p-value is the "
    "Nadeau–Bengio corrected resampled t-test over the shared folds (it allows for folds trained on overlapping letters); "
    "under holdout, a paired bootstrap over letters, with McNemar's exact test as a second opinion. The 95% CI is a paired "
    "bootstrap over letters (a letter's predictions in every repeat move together); p-values are Holm-adjusted over the "
    "comparisons. A difference counts only when its CI excludes 0 and p < 0.05."
)
SIGNIFICANCE_COLUMNS = [
    "best",
    "other",
    "verdict",
    "protocol",
    "n_letters",
    "n_folds",
    "best_macro_f1",
    "other_macro_f1",
    "difference",
    "diff_ci_low",
    "diff_ci_high",
    "p_corrected",
    "p_bootstrap",
    "p_mcnemar",
    "p_holm",
]
LETTER_COLUMNS = {"letter": {"width": "large"}, "row": {"help": "0-based row of the letter in the dataset"}}


def protocol_counts(comp: pd.DataFrame) -> str:
    """'2 cv, 1 holdout'."""
    counts = comp["protocol"].value_counts()
    return ", ".join(f"{n} {name}" for name, n in counts.items())


def verdict_lines(sig: pd.DataFrame) -> list[str]:
    """One markdown bullet per comparison: 'A vs B: <verdict in words>'."""
    return [f"- **{r['best']}** vs **{r['other']}**: {r['summary']}" for _, r in sig.iterrows()]


def significance_table(sig: pd.DataFrame) -> pd.DataFrame:
    return sig[[c for c in SIGNIFICANCE_COLUMNS if c in sig]].round(4)


def compared_labels(sig: pd.DataFrame | None, labels: list[str]) -> list[str]:
    """The evaluations of the significance table (best first), else the first two."""
    if sig is not None and len(sig):
        return [sig["best"].iloc[0], *sig["other"]]
    return labels[:2]


def letters_caption(df: pd.DataFrame, ev, what: str) -> str:
    n = len(df)
    text = f"{n} letter(s) {ev.label} got wrong." if what == "misclassified" else f"{n} letter(s) on which the chosen evaluations disagree."
    if ev.protocol == "cv":
        text += " Cross-validation: the predictions of its first repeat, each letter once, from a model that never saw it."
    if note := df.attrs.get("note"):
        text += f" {note}"
    return text
