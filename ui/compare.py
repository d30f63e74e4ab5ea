"""The Compare page's words and table layouts: which columns to show, the significance verdicts as plain
sentences, captions of the letter tables. Pure: engine tables in, strings and DataFrames out (no streamlit)."""

from __future__ import annotations

import re

import pandas as pd

from ui import numbering

_NUMBER = r"(-?\d+(?:\.\d+)?(?:e-?\d+)?)"
_INTERVAL = re.compile(f"{_NUMBER}–{_NUMBER}")  # "0.614–0.707", as _interval writes it
_VALUE_CI = re.compile(f"{_NUMBER} \\({_NUMBER} to {_NUMBER}\\)")  # "0.120 (0.100 to 0.140)", as ui.calibration writes it

CHART_TITLE = "Macro-F1 per model and method (95% bootstrap CI over duplicate groups)"
CURVE_TITLE = "Learning curve: macro-F1 against training letters per label (95% CI)"
CURVE_NOTE = (
    "Each point: one training size, scored on the same test letters (the sizes' training letters are nested: the 8 per "
    "label are among the 16). 'all' sits at the mean number of training letters per label. A line still rising at 'all' "
    "says more labelled letters would help; lines that are flat and apart say the model matters more than the labels. "
    "Several evaluations at one size (seeds, settings) are averaged. Run one with the option learning_curve (e.g. 8,16,32,64)."
)
# Column -> header on screen and in the CSVs (the engine's JSON keeps its snake_case names).
SCORE_COLUMNS = {
    "evaluation": "Evaluation",
    "macro_f1": "Macro-F1",
    "ci": "95% CI",
    "scored_on": "Scored on",
    "fold_sd": "Fold SD",
    "macro_precision": "Precision",
    "macro_recall": "Recall",
    "baseline_macro_f1": "Baseline",
}
SETTING_COLUMNS = {
    "evaluation": "Evaluation",
    "protocol": "Protocol",
    "n_scored": "Letters scored",
    "ci_low": "CI low",
    "ci_high": "CI high",
    "accuracy": "Accuracy",
    "n_letters": "Letters",
    "n_test": "Predictions scored",
    "seed": "Seed",
    "labels_per_class": "Training letters per label (limit)",
    "train_per_label": "Training letters per label (mean)",
    "pooling": "Pooling",
    "max_length": "Max tokens",
    "windows": "Windows per letter",
    "smote": "SMOTE",
    "key": "Evaluation key",
}
PER_CLASS_COLUMNS = {
    "evaluation": "Evaluation",
    "class": "Class",
    "precision": "Precision",
    "recall": "Recall",
    "f1": "F1",
    "support": "Letters",
}
SCORE_NOTE = (
    "Macro-F1 is pooled over every scored letter and averaged over all classes of the dataset; precision and recall are "
    "macro averages too. Scored on: the protocol, cv (cross-validation) or holdout (one test split), and the letters behind "
    "the figure (all of them under cv, the test split under holdout). Fold SD: standard deviation of macro-F1 over the folds. "
    "Baseline: macro-F1 of always answering the most frequent class, on the same letters."
)
CONFUSION_NOTE = (
    "Rows: the true label, columns: the predicted one; each letter counted once, so a row adds up to the letters with that "
    "label. Under cv every letter is scored once per repeat: the cells are the mean over the repeats (hence halves)."
)
LETTERS_ONCE = (
    " Letters: each letter counted once (under cv every letter is scored once per repeat; the counts are divided by the "
    "repeats, and a predicted-for count is the mean over them)."
)
SIGNIFICANCE_INTRO = (
    "One family of paired tests: every pair of up to four evaluations, else each against the best, all ranked and tested on "
    "the letters and folds they all share. Under cv the p-value is the Nadeau–Bengio corrected resampled t-test over the "
    "shared folds (it allows for folds trained on overlapping letters); under holdout, a paired bootstrap over duplicate "
    "groups, with McNemar's exact test as a second opinion. p-values are Holm-adjusted over the family, and the interval "
    "beside each verdict is its own test's, at the level that matches that adjustment, so it excludes 0 exactly when the "
    "verdict reports a difference."
)
SIGNIFICANCE_COLUMNS = {
    "best": "Best",
    "other": "Other",
    "verdict": "Verdict",
    "metric": "Metric",
    "difference": "Difference",
    "diff_ci": "CI (its test's)",
    "ci_level": "CI level %",
    "p_holm": "p (Holm)",
    "n_letters": "Letters",
}
LETTER_HEADERS = {"row": "Row", "truth": "True label", "prediction": "Predicted", "score": "Probability", "letter": "Letter"}
LETTER_COLUMNS = {"Letter": {"width": "large"}, "Row": {"help": numbering.HELP}}


# Multi-label evaluations (metrics task "multi-label"): three F1 scores with CIs, one of them the headline.
HEADLINES = {"micro_f1": "Micro-F1", "macro_f1": "Macro-F1", "samples_f1": "Samples-F1"}
ML_SCORE_COLUMNS = {
    "evaluation": "Evaluation",
    "micro_f1": "Micro-F1",
    "micro_ci": "Micro-F1 95% CI",
    "macro_f1": "Macro-F1",
    "macro_ci": "Macro-F1 95% CI",
    "samples_f1": "Samples-F1",
    "samples_ci": "Samples-F1 95% CI",
    "subset_accuracy": "Subset accuracy",
    "hamming_loss": "Hamming loss",
    "scored_on": "Scored on",
    "baseline_micro_f1": "Baseline micro-F1",
}
ML_SCORE_NOTE = (
    "Several labels per letter (multi-label). Micro-F1 pools every (letter, label) decision, so frequent labels weigh "
    "more; macro-F1 averages the F1 of each label, so rare labels count as much as frequent ones; samples-F1 averages each "
    "letter's F1 (a letter with no label and none predicted counts 1). Subset accuracy: the whole label set right; Hamming "
    "loss: the share of wrong (letter, label) decisions (lower is better). CIs: bootstrap over duplicate groups. Baseline: always "
    "answering the most frequent label set of the training letters (often: no label)."
)
ML_PAIRED_NOTE = (
    " Several labels per letter: the tests compare the headline chosen above (micro-, macro- or samples-F1), and McNemar's "
    "test counts the letters whose whole label set only one of the two got right."
)
ML_PER_LABEL_NOTE = (
    "Multi-label evaluations have no confusion matrix (a letter may carry several labels, or none): each label is its own "
    "yes/no decision, scored by its precision (of the letters given the label, the share that carry it), recall (of the "
    "letters that carry it, the share given it) and F1."
)


def is_multi_label(evals: list) -> bool:
    """Whether the evaluations scored label sets (one dataset's evaluations are all of one kind)."""
    return any(e.multi_label for e in evals)


def headline(comp: pd.DataFrame, metric: str) -> pd.DataFrame:
    """The comparison with `metric` (micro_f1, macro_f1 or samples_f1), its CI and baseline in the columns the score chart
    reads (macro_f1, ci_low, ci_high, baseline_macro_f1), best first."""
    if metric == "macro_f1":
        return comp
    t = comp.assign(
        macro_f1=comp[metric],
        ci_low=comp[f"{metric}_ci_low"],
        ci_high=comp[f"{metric}_ci_high"],
        baseline_macro_f1=comp[f"baseline_{metric}"],
    )
    return t.sort_values("macro_f1", ascending=False, kind="stable").reset_index(drop=True)


def headline_title(metric: str) -> str:
    return f"{HEADLINES[metric]} per model and method, several labels per letter (95% bootstrap CI over duplicate groups)"


def multilabel_score_table(comp: pd.DataFrame) -> pd.DataFrame:
    """A multi-label comparison as a person reads it: micro-, macro- and samples-F1 with their CIs, subset accuracy,
    Hamming loss, the letters behind the figures, the baseline."""
    t = comp.assign(
        micro_ci=[_interval(lo, hi) for lo, hi in zip(comp["micro_f1_ci_low"], comp["micro_f1_ci_high"])],
        macro_ci=[_interval(lo, hi) for lo, hi in zip(comp["ci_low"], comp["ci_high"])],
        samples_ci=[_interval(lo, hi) for lo, hi in zip(comp["samples_f1_ci_low"], comp["samples_f1_ci_high"])],
        scored_on=[f"{p} · {n} letters" for p, n in zip(comp["protocol"], comp["n_scored"])],
    )
    return t[list(ML_SCORE_COLUMNS)].round(3).rename(columns=ML_SCORE_COLUMNS)


def per_label_table(per_class: pd.DataFrame) -> pd.DataFrame:
    """Multi-label: precision, recall, F1, letters carrying the label and letters it was predicted for, per label."""
    columns = {**PER_CLASS_COLUMNS, "class": "Label", "support": "Letters with it", "predicted": "Predicted for"}
    return per_class[list(columns)].round(3).rename(columns=columns)


def _interval(lo, hi) -> str:
    return "" if pd.isna(lo) or pd.isna(hi) else f"{lo:.3f}–{hi:.3f}"


def split_intervals(df: pd.DataFrame) -> pd.DataFrame:
    """A table for a CSV: each interval column (one text cell '0.614–0.707', as the screen shows it) as two numbers in
    '<column> low' and '<column> high' where it stood, and a 'value (low to high)' column ('Brier (95% CI)') as three:
    'Brier', 'Brier 95% CI low', 'Brier 95% CI high'; so a spreadsheet can compute with them."""
    out = {}
    for col in df.columns:
        values = df[col]
        spans = [_INTERVAL.fullmatch(v) if isinstance(v, str) else None for v in values]
        pairs = [_VALUE_CI.fullmatch(v) if isinstance(v, str) else None for v in values]
        empty = [v is None or v == "" for v in values]
        if any(spans) and all(m or e for m, e in zip(spans, empty)):
            out[f"{col} low"] = [float(m.group(1)) if m else None for m in spans]
            out[f"{col} high"] = [float(m.group(2)) if m else None for m in spans]
        elif any(pairs) and all(m or e or _is_number(v) for m, e, v in zip(pairs, empty, values)):
            base = str(col).replace(" (95% CI)", "")
            out[base] = [float(m.group(1)) if m else (float(v) if _is_number(v) else None) for m, v in zip(pairs, values)]
            out[f"{base} 95% CI low"] = [float(m.group(2)) if m else None for m in pairs]
            out[f"{base} 95% CI high"] = [float(m.group(3)) if m else None for m in pairs]
        else:
            out[col] = values
    split = pd.DataFrame(out, index=df.index)
    split.attrs = df.attrs
    return split


def _is_number(v) -> bool:
    return isinstance(v, str) and re.fullmatch(_NUMBER, v) is not None


def score_table(comp: pd.DataFrame) -> pd.DataFrame:
    """The comparison as a person reads it: human headers, the CI as one column, figures to 3 decimals."""
    t = comp.assign(
        ci=[_interval(lo, hi) for lo, hi in zip(comp["ci_low"], comp["ci_high"])],
        scored_on=[f"{p} · {n} letters" for p, n in zip(comp["protocol"], comp["n_scored"])],
        fold_sd=[f"{v:.3f}" if p == "cv" and v is not None and not pd.isna(v) else "–" for p, v in zip(comp["protocol"], comp["fold_sd"])],
    )
    return t[list(SCORE_COLUMNS)].round(3).rename(columns=SCORE_COLUMNS)


def settings_table(comp: pd.DataFrame) -> pd.DataFrame:
    return comp[[c for c in SETTING_COLUMNS if c in comp]].round(4).rename(columns=SETTING_COLUMNS)


def per_class_table(per_class: pd.DataFrame) -> pd.DataFrame:
    return per_class[list(PER_CLASS_COLUMNS)].round(3).rename(columns=PER_CLASS_COLUMNS)


def letters_table(df: pd.DataFrame) -> pd.DataFrame:
    """Misclassified/disagreement letters with human headers (per-evaluation prediction columns keep their labels) and
    rows counted from 1 (ui.numbering)."""
    out = numbering.file_rows(df).round(3).rename(columns=LETTER_HEADERS)
    out.attrs = df.attrs
    return out


def protocol_counts(comp: pd.DataFrame) -> str:
    """'2 cv, 1 holdout'."""
    counts = comp["protocol"].value_counts()
    return ", ".join(f"{n} {name}" for name, n in counts.items())


def verdict_lines(sig: pd.DataFrame) -> list[str]:
    """One markdown bullet per comparison: 'A vs B: <verdict in words>'."""
    return [f"- **{r['best']}** vs **{r['other']}**: {r['summary']}" for _, r in sig.iterrows()]


def family_caption(sig: pd.DataFrame) -> str:
    """Which tests the verdicts' p-values were adjusted over."""
    family = sig["family"].dropna()
    return f"Each row: a pair, the higher ranked first (Best). The family: {family.iloc[0]}." if len(family) else ""


def significance_table(sig: pd.DataFrame) -> pd.DataFrame:
    """The verdicts' figures: the difference with the interval of the test the verdict used (the corrected resampled t-test
    over folds under cv, the paired cluster bootstrap under holdout; at the level matching its Holm-adjusted p, said in
    each verdict sentence), that Holm-adjusted p, the shared letters."""
    t = sig.assign(
        diff_ci=[_interval(lo, hi) for lo, hi in zip(sig["diff_ci_low"], sig["diff_ci_high"])], metric=sig["metric"].map(HEADLINES)
    )
    return t[list(SIGNIFICANCE_COLUMNS)].round(4).rename(columns=SIGNIFICANCE_COLUMNS)


def compared_labels(sig: pd.DataFrame | None, labels: list[str]) -> list[str]:
    """The evaluations of the significance table (best first, each once: with every pair tested, one is `other` in
    several rows), else the first two."""
    if sig is not None and len(sig):
        return list(dict.fromkeys([sig["best"].iloc[0], *sig["best"], *sig["other"]]))
    return labels[:2]


def letters_caption(df: pd.DataFrame, ev, what: str) -> str:
    n = len(df)
    text = f"{n} letter(s) {ev.label} got wrong." if what == "misclassified" else f"{n} letter(s) on which the chosen evaluations disagree."
    if ev.protocol == "cv":
        text += " Cross-validation: the predictions of its first repeat, each letter once, from a model that never saw it."
    if note := df.attrs.get("note"):
        text += f" {note}"
    return text


def has_learning_curve(comp: pd.DataFrame) -> bool:
    """Whether the comparison holds more than one training size (labels_per_class; None: all letters)."""
    return "labels_per_class" in comp and comp["labels_per_class"].nunique(dropna=False) > 1


def learning_curve_points(comp: pd.DataFrame) -> pd.DataFrame:
    """One row per model · method (`line`, with its stage when tuned, as evaluation labels write it) and training size:
    `size` (letters per label, None: all), `x` (the size; for all, the mean training letters per label), macro-F1 and its
    CI (the mean over the evaluations at that size: seeds, settings), `n` evaluations and their labels. Sorted by line, x."""
    columns = ["line", "size", "x", "macro_f1", "ci_low", "ci_high", "n", "evaluations"]
    if not len(comp):
        return pd.DataFrame(columns=columns)
    t = comp.assign(
        line=[
            f"{m} · {meth}" + ("" if st == "frozen" else f" ({st})") for m, meth, st in zip(comp["model"], comp["method"], comp["stage"])
        ],
        size=[None if pd.isna(n) else int(n) for n in comp["labels_per_class"]],
    )
    rows = []
    for (line, size), part in t.groupby(["line", t["size"].fillna(-1)], sort=True):
        rows.append(
            {
                "line": line,
                "size": None if size == -1 else int(size),
                "x": float(part["train_per_label"].mean()) if size == -1 else float(size),
                "macro_f1": float(part["macro_f1"].mean()),
                "ci_low": float(part["ci_low"].mean()),
                "ci_high": float(part["ci_high"].mean()),
                "n": int(len(part)),
                "evaluations": list(part["evaluation"]),
            }
        )
    return pd.DataFrame(rows, columns=columns).sort_values(["line", "x"], kind="stable").reset_index(drop=True)
