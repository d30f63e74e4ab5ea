"""The methods section of a comparison (`methods.md`): a paragraph a researcher can paste into a paper, written from the
evaluations' manifests, never typed by hand.

It says what the letters were (how many, the classes and their counts, duplicate groups, conflicting copies, letters cut
at max_length), the protocol and seeds, each model and method with its settings, the metrics and tests, the software
versions; then the comparison table with its 95% CIs (and subgroup figures where recorded), the verdicts of the paired
tests, and which TRIPOD+AI items (Collins et al., BMJ 2024;385:e078378) the report covers and which are the user's to write.
A figure the manifests do not hold is said to be missing, never guessed.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pandas as pd

from engine.evaluation import headline
from engine.evaluation.results import Evaluation, comparison_table
from engine.options import groups

ESSENTIAL_VERSIONS = (
    "python",
    "torch",
    "transformers",
    "scikit-learn",
    "numpy",
    "scipy",
    "peft",
    "sentence-transformers",
    "llama-cpp-python",
)
# settings said elsewhere (data, protocol) or the run's bookkeeping
NOT_SETTINGS = {"n_seeds", "learning_curve", "label_conflicts", "no_label", "protocol", "seed", "labels_per_class"}
SHARED_GROUPS = ("protocol", "embedding")  # the options every method reads
# the option groups a stored classifier's kind reads (its manifest's `predictor`)
PREDICTOR_GROUPS = {
    "embedding-classifier": ("classifier",),
    "text-pipeline": ("classifier",),
    "sequence-classifier": ("finetune",),
    "tuned-encoder": ("setfit",),
    "prompted-lm": ("prompt",),
    "tuned-lm": ("prompt", "finetune"),
}


def _fmt(x, digits: int = 3) -> str:
    return "n/a" if x is None or x != x else f"{x:.{digits}f}"


def _find(node, prefix: str):
    """The first value under a key starting with `prefix` anywhere in a manifest (None when none)."""
    if isinstance(node, dict):
        for k, v in node.items():
            if str(k).startswith(prefix) and isinstance(v, int | float):
                return v
            if (found := _find(v, prefix)) is not None:
                return found
    return None


def _class_counts(e: Evaluation) -> tuple[dict[str, int], str]:
    """(letters per class behind its figures, what they count): every letter under cv (support / repeats), the test letters
    under holdout or fixed."""
    m, p = e.metrics, e.manifest.get("protocol") or {}
    rows = m.get("per_label") or [{"label": c, **v} for c, v in (m.get("per_class") or {}).items()]
    repeats = int(p.get("n_repeats") or 1) if e.protocol == "cv" else 1
    counts = {str(r["label"]): int(round(r.get("support", 0) / repeats)) for r in rows}
    return counts, "letters" if e.protocol == "cv" else "test letters"


def _data(evals: list[Evaluation]) -> str:
    e = evals[0]
    d, p, cfg = e.manifest["data"], e.manifest.get("protocol") or {}, e.manifest.get("config", {})
    counts, what = _class_counts(e)
    classes = ", ".join(f"{c} ({n})" for c, n in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))
    multi = " Each letter carries a set of labels (possibly none)." if e.multi_label else ""
    g = p.get("groups") or {}
    dup = (
        "No duplicate letters were found (exact copies after normalising case, whitespace and punctuation"
        + (f", or near-copies at MinHash Jaccard ≥ {g['near_threshold']}" if g.get("near_threshold") else "")
        + ")."
        if g and not g.get("n_duplicate_groups")
        else f"Exact copies (identical after normalising case, whitespace and punctuation){' and near-copies (MinHash Jaccard ≥ ' + str(g['near_threshold']) + ')' if g.get('near_threshold') else ''} "
        f"were grouped: {g.get('n_duplicate_groups', 'n/a')} groups of copies (the largest of {g.get('largest', 'n/a')} letters) were "
        "kept whole on one side of every split."
        if g
        else "Duplicate groups were not recorded."
    )
    conflicts = {
        "group": "Copies filed under different labels were kept, grouped like any copies.",
        "drop": "Copies filed under different labels were left out before scoring.",
        "merge": "Each set of copies filed under different labels was merged into one letter carrying all their labels.",
    }.get(cfg.get("label_conflicts", "group"), "")
    cut = sorted({(_model_name(x.model), n) for x in evals if (n := _find(x.manifest, "n_truncated")) is not None})
    cut_text = (
        f"Letters longer than max_length ({cfg.get('max_length')} tokens) and cut: " + "; ".join(f"{n} for {name}" for name, n in cut) + "."
        if cut
        else "The number of letters cut at max_length is not recorded in these evaluations."
    )
    return (
        f"We used {d.get('n_letters')} letters from {Path(str(d.get('source', '?'))).name} (data hash {str(d.get('data_hash', ''))[:12]}), "
        f"labelled with {len(d.get('classes') or [])} classes; {what} per class behind the figures: {classes}.{multi} {dup} "
        f"{conflicts} {cut_text}"
    )


def _protocol(evals: list[Evaluation]) -> str:
    texts = []
    for reason, members in _by(evals, lambda e: (e.manifest.get("protocol") or {}).get("reason") or e.protocol).items():
        seeds = sorted({m.manifest.get("config", {}).get("seed", 0) for m in members})
        sizes = sorted({m.labels_per_class for m in members if m.labels_per_class})
        text = f"{reason[0].upper()}{reason[1:]} (seed{'s' if len(seeds) > 1 else ''} {', '.join(map(str, seeds))}"
        text += f"; training side cut to {', '.join(map(str, sizes))} letters per label" if sizes else ""
        texts.append(text + f"; {len(members)} evaluation{'s' if len(members) > 1 else ''}).")
    return " ".join(texts) + " A classifier was never scored on a letter it was trained on, nor on a copy of one."


def _by(evals, key) -> dict:
    out: dict = {}
    for e in evals:
        out.setdefault(key(e), []).append(e)
    return out


def _model_name(name: str) -> str:
    """A model's name; a local folder's last part (no machine path in a paper)."""
    return Path(name).name if "/" in name or "\\" in name else name


def _settings(evals: list[Evaluation]) -> str:
    """Each evaluation's model, method and the settings its kind of classifier reads; the options every method reads once."""
    shared_names = [n for n in groups.names(*SHARED_GROUPS) if n not in NOT_SETTINGS]
    configs = [e.manifest.get("config", {}) for e in evals]
    lines = []
    for e, cfg in zip(evals, configs, strict=True):
        own = groups.names(*PREDICTOR_GROUPS.get(e.manifest.get("predictor") or "", ()))
        shown = ", ".join(f"{k}={cfg[k]}" for k in own if k in cfg and k not in NOT_SETTINGS and cfg[k] not in (None, [], {}))
        lines.append(
            f"- **{e.label}**: model {_model_name(e.model)} ({e.stage}), method {e.manifest.get('method_title') or e.method}"
            + (f"; {shown}" if shown else "")
            + "."
        )
    same = [k for k in shared_names if all(k in c for c in configs) and all(c[k] == configs[0][k] for c in configs)]
    differ = [k for k in shared_names if k not in same and any(k in c for c in configs)]
    text = (
        "\n".join(lines)
        + "\n\nSettings of every evaluation: "
        + ", ".join(f"{k}={configs[0][k]}" for k in same if configs[0][k] is not None)
    )
    if differ:
        text += "; differing: " + "; ".join(f"{k} " + ", ".join(str(c.get(k)) for c in configs) for k in differ)
    return text + "."


def _metrics(evals: list[Evaluation], sig: pd.DataFrame | None) -> str:
    n_boot = sorted({e.manifest.get("config", {}).get("n_boot") for e in evals} - {None})
    tasks = Counter(e.metrics.get("task", "single-label") for e in evals)
    text = (
        "Macro-F1 (the unweighted mean of the per-class F1 over every class of the dataset) was computed on the pooled "
        "out-of-fold predictions (under cross-validation every letter is scored once per repeat, by a classifier that never "
        f"saw it), with a 95% percentile confidence interval from a stratified cluster bootstrap ({', '.join(map(str, n_boot)) or 'n/a'} "
        "resamples of duplicate groups within each label: copies of a letter and a letter's predictions in every repeat are "
        "resampled together, and every class is present in every resample); the per-fold spread is reported as the standard "
        "deviation over folds. The majority-label baseline is scored on the same folds."
    )
    if tasks.get("binary"):
        text += " For two labels, sensitivity, specificity, PPV, NPV, ROC-AUC and PR-AUC with bootstrap CIs at the operating threshold chosen on training letters only."
    if tasks.get("multi-label"):
        text += " For label sets, micro-, macro- and samples-F1, subset accuracy and Hamming loss, each label decided at its own threshold."
    if any("brier" in e.metrics for e in evals):
        text += (
            " Calibration: the Brier score and the expected calibration error (10 equal-width bins), and for two labels the "
            "calibration intercept and slope (logistic recalibration), each with a CI from the same bootstrap."
        )
    if any(e.metrics.get("subgroups") for e in evals):
        column = next(e.metrics["subgroup_column"] for e in evals if e.metrics.get("subgroups"))
        text += (
            f" Performance was also reported for each value of {column!r} (macro-F1 with a 95% CI from resampling duplicate "
            "groups within each subgroup), with the gap between the best and the worst subgroup and its CI."
        )
    if sig is not None and len(sig):
        tests = set()
        if sig["p_corrected"].notna().any():
            tests.add("the Nadeau-Bengio corrected resampled t-test over the folds (cross-validation)")
        if sig["p_mcnemar"].notna().any():
            tests.add("McNemar's exact test and a paired bootstrap (one test split)")
        if sig["p_corrected"].isna().any():
            tests.add("a paired cluster bootstrap over duplicate groups")
        text += (
            f" Evaluations were compared pairwise on the letters and folds they share by {'; '.join(sorted(tests))}, "
            "with Holm's adjustment over the whole family of tests"
            + (f" ({sig['family'].dropna().iloc[0]})" if "family" in sig and sig["family"].notna().any() else "")
            + "; the interval beside each verdict comes from the same test as its p-value."
        )
    return text


def _versions(evals: list[Evaluation]) -> str:
    seen: dict[str, set] = {}
    for e in evals:
        for k, v in {**e.manifest.get("versions", {}), **{"clinbench": e.manifest.get("environment", {}).get("clinbench")}}.items():
            if v and (k in ESSENTIAL_VERSIONS or k == "clinbench") and v != "not installed":
                seen.setdefault(k, set()).add(str(v))
    if not seen:
        return "Software versions are not recorded in these evaluations."
    return "Software: " + ", ".join(f"{k} {' / '.join(sorted(v))}" for k, v in sorted(seen.items())) + "."


def _table(evals: list[Evaluation]) -> str:
    """The comparison on its headline (engine.evaluation.headline: macro-F1; micro-F1 for label sets), best first."""
    comp = comparison_table(evals)
    key = headline.metric(evals[0].metrics.get("task") if evals else None)
    value, lo, hi = (key, "ci_low", "ci_high") if key == "macro_f1" else (key, f"{key}_ci_low", f"{key}_ci_high")
    comp = comp.sort_values(value, ascending=False, kind="stable") if len(comp) else comp
    name = headline.SCORES[key]
    lines = [f"| evaluation | protocol | letters scored | {name} | 95% CI | majority baseline |", "|---|---|---|---|---|---|"]
    for r in comp.to_dict("records"):
        lines.append(
            f"| {r['evaluation']} | {r['protocol']} | {r['n_scored']} | {_fmt(r[value])} | {_fmt(r[lo])}–{_fmt(r[hi])} | "
            f"{_fmt(r[f'baseline_{key}'])} |"
        )
    return "\n".join(lines)


def _subgroups(evals: list[Evaluation]) -> str:
    parts = []
    for e in evals:
        m = e.metrics
        if not m.get("subgroups"):
            continue
        rows = "; ".join(
            f"{r['name']} {_fmt(r['macro_f1'])} ({_fmt((r['macro_f1_ci'] or [None])[0])} to {_fmt((r['macro_f1_ci'] or [None, None])[1])}, n={r['n']})"
            for r in m["subgroups"]
        )
        gap = ""
        if m.get("subgroup_gap") is not None:
            lo, hi = m.get("subgroup_gap_ci") or (None, None)
            gap = f"; gap {m['subgroup_gap_between'][0]} − {m['subgroup_gap_between'][1]}: {_fmt(m['subgroup_gap'])} ({_fmt(lo)} to {_fmt(hi)})"
        parts.append(f"- {e.label}, by {m['subgroup_column']}: {rows}{gap}.")
    return "\n".join(parts)


TRIPOD_COVERED = (
    ("5a", "data source", "the letters file and its content hash"),
    ("7", "data preparation", "duplicate grouping, conflicting copies, letters cut at max_length"),
    ("8a", "outcome", "the classes and their counts"),
    ("10", "sample size", "letters and letters per class behind each figure"),
    ("12a", "data use and splits", "the protocol, folds or test split, seeds, duplicate groups kept whole"),
    ("12c", "model type and building", "each model, method and its settings"),
    ("12e", "performance measures", "the metrics, their CIs and the paired tests"),
    ("13", "class imbalance", "macro-F1 over every class and the majority baseline"),
    ("16", "training versus evaluation", "out-of-fold scoring; a classifier is never scored on its training letters"),
    ("18", "open science", "software versions (share the manifests with the code)"),
    ("23a", "model performance", "the table of figures with 95% CIs"),
)
TRIPOD_SUBGROUPS = (("14 / 23b", "fairness and performance across subgroups", "the subgroup figures and the best-worst gap"),)
TRIPOD_USER = (
    "1-2 title and abstract",
    "3 background, target population and health inequalities",
    "4 objectives",
    "5b data dates",
    "6 setting and eligibility of the patients",
    "8 how the labels (outcome) were assigned and by whom",
    "11 missing data",
    "14 fairness (where no subgroup column was scored)",
    "17 ethical approval",
    "18 funding, conflicts, protocol and data availability",
    "19 patient and public involvement",
    "20 flow of participants",
    "25-27 interpretation, limitations, usability",
)


def _tripod(evals: list[Evaluation]) -> str:
    has_subgroups = any(e.metrics.get("subgroups") for e in evals)
    covered = TRIPOD_COVERED + (TRIPOD_SUBGROUPS if has_subgroups else ())
    lines = ["Covered by this report (item, topic: where):"]
    lines += [f"- {item} {topic}: {where}" for item, topic, where in covered]
    lines += ["", "Yours to write:"]
    lines += [f"- {item}" for item in TRIPOD_USER if not (item.startswith("14 ") and has_subgroups)]
    lines += ["", "Check the item numbers against the published checklist (tripod-statement.org) before submitting."]
    return "\n".join(lines)


def methods_markdown(evals: list[Evaluation], significance: pd.DataFrame | None = None) -> str:
    """methods.md of a comparison of `evals` (one dataset); `significance`: engine.evaluation.comparison.significance of
    them (its verdicts are listed), or None."""
    if not evals:
        raise ValueError("methods.md needs at least one evaluation")
    if len({e.data_hash for e in evals}) > 1:
        raise ValueError("methods.md describes evaluations of one dataset: choose evaluations of one dataset")
    parts = [
        "# Methods",
        "_Generated by ClinBench from the evaluations' manifests; edit the wording, not the figures._",
        "## Data",
        _data(evals),
        "## Evaluation protocol",
        _protocol(evals),
        "## Models and methods",
        _settings(evals),
        "## Metrics and statistical tests",
        _metrics(evals, significance),
        _versions(evals),
        "## Results",
        _table(evals),
    ]
    if sub := _subgroups(evals):
        parts += ["### Subgroups", sub]
    if significance is not None and len(significance):
        parts += ["### Paired comparisons", "\n".join(f"- {s}" for s in significance["summary"] if isinstance(s, str))]
    parts += ["## TRIPOD+AI", _tripod(evals)]
    return "\n\n".join(parts) + "\n"
