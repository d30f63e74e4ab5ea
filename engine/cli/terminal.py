"""What the command line draws on a terminal: one progress bar per stage of a step (tqdm, on stderr), and an
evaluation's figures (single-label: macro-F1 and per class; multi-label: micro-, macro- and samples-F1 and per label)."""

from __future__ import annotations

import sys

from engine.cache.context import StepContext


def progress_bars():
    """A StepContext drawing one tqdm bar per stage on stderr."""
    from tqdm import tqdm

    state = {"bar": None, "stage": None}

    def progress(done: int, total: int, stage: str) -> None:
        if state["stage"] != stage:
            if state["bar"] is not None:
                state["bar"].close()
            state["bar"] = tqdm(total=total, desc=stage, unit="letter" if total > 1 else "step", leave=False, file=sys.stderr, disable=None)
            state["stage"] = stage
        bar = state["bar"]
        bar.total, bar.n = total, done
        bar.refresh()
        if done >= total and stage in ("done", "loaded from cache"):
            bar.close()

    return StepContext(progress=progress)


def print_metrics(title: str, m: dict, reason: str | None = None) -> None:
    """An evaluation's headline figures with their 95% CIs, the per-fold spread, and the per-class (per-label) table."""
    print(f"\n{title}")
    if reason:
        print(f"  protocol: {reason}")
    n = m.get("n_scored", m.get("n_test"))  # the letters behind the figure: all (cv) or the test split (holdout)
    where = f"{m.get('protocol', 'holdout')}, n={n} letters"
    base = m.get("baseline") or {}
    if m.get("task") == "multi-label":
        for name in ("micro_f1", "macro_f1", "samples_f1"):
            lo, hi = m[f"{name}_ci"]
            label = name.replace("_f1", "-F1")
            print(f"  {label:10s} {m[name]:.3f} (95% CI {lo:.3f}-{hi:.3f})" + (f"   baseline {base[name]:.3f}" if name in base else ""))
        print(
            f"  subset accuracy {m['subset_accuracy']:.3f}   Hamming loss {m['hamming_loss']:.3f}   ({where}; baseline: {base.get('label')})"
        )
        folds = "fold_micro_f1"
    else:
        lo, hi = m["macro_f1_ci"]
        print(
            f"  macro-F1 {m['macro_f1']:.3f} (95% CI {lo:.3f}-{hi:.3f}, {where})   accuracy {m['accuracy']:.3f}"
            + (f"   majority baseline macro-F1 {base['macro_f1']:.3f}" if base else "")
        )
        folds = "fold_macro_f1"
    if m.get("task") == "binary":
        shown = [
            f"{k} {m[k]:.3f} ({m[k + '_ci'][0]:.3f}-{m[k + '_ci'][1]:.3f})"
            for k in ("sensitivity", "specificity", "ppv", "npv")
            if m.get(k + "_ci")
        ]
        print(f"  positive label {m['positive_label']!r} at threshold {m['threshold']:.3f} ({m['threshold_rule']}): " + ", ".join(shown))
        aucs = [
            f"{k.replace('_', '-').upper()} {m[k]:.3f} ({m[k + '_ci'][0]:.3f}-{m[k + '_ci'][1]:.3f})"
            for k in ("roc_auc", "pr_auc")
            if m.get(k + "_ci")
        ]
        print("  " + ", ".join(aucs))
    calibration = [
        f"{label} {m[k]:.3f}" + (f" ({m[k + '_ci'][0]:.3f} to {m[k + '_ci'][1]:.3f})" if m.get(k + "_ci") else "")
        for k, label in (("brier", "Brier"), ("ece", "ECE"), ("calibration_intercept", "intercept"), ("calibration_slope", "slope"))
        if m.get(k) is not None
    ]
    if calibration:  # evaluations stored before calibration was recorded have none
        print("  calibration: " + ", ".join(calibration))
    if len(m.get(folds) or []) > 1:
        name = folds.removeprefix("fold_").replace("_f1", "-F1")
        print(f"  per fold: {name} {m[folds + '_mean']:.3f} ± {m[folds + '_sd']:.3f} (mean ± sd of {len(m[folds])} folds)")
    print(f"  {'label':32s} {'precision':>9s} {'recall':>7s} {'F1':>6s} {'n':>5s}")
    for lab, r in m["per_class"].items():
        print(f"  {lab[:32]:32s} {r['precision']:9.3f} {r['recall']:7.3f} {r['f1']:6.3f} {r['support']:5d}")
    print_subgroups(m)


def print_subgroups(m: dict) -> None:
    """An evaluation's subgroup figures (engine.evaluation.subgroups), when it has them."""
    if not m.get("subgroups"):
        return
    print(f"  subgroups of {m['subgroup_column']!r} (macro-F1, 95% CI, letters):")
    for r in m["subgroups"]:
        ci = f"{r['macro_f1_ci'][0]:.3f}-{r['macro_f1_ci'][1]:.3f}" if r["macro_f1_ci"] else "no CI"
        f1 = f"{r['macro_f1']:.3f}" if r["macro_f1"] == r["macro_f1"] else "  n/a"
        print(f"    {r['name'][:30]:30s} {f1} ({ci}) n={r['n']}" + ("  too few letters" if r["too_few"] else ""))
    if m.get("subgroup_gap") is not None:
        lo, hi = m["subgroup_gap_ci"] or (float("nan"), float("nan"))
        best, worst = m["subgroup_gap_between"]
        print(f"  gap best - worst ({best} - {worst}): {m['subgroup_gap']:+.3f} (95% CI {lo:+.3f} to {hi:+.3f})")
    for w in m.get("subgroup_warnings") or []:
        print(f"  warning: {w}")
