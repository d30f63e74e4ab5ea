"""Is one model better than another? Comparisons across stored evaluations: the best against the next ones on the
letters and folds they share (engine.paired: paired bootstrap; under cv the Nadeau-Bengio corrected resampled t-test;
Holm-adjusted; macro-F1, or for label sets the chosen headline), with a verdict in plain words, and the spread of macro-F1 across seeds (runs with n_seeds > 1)."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd

from engine.evaluation import paired
from engine.evaluation.results import Evaluation, predictions
from engine.options.groups import MOST_PROBABLE


def _classes(*sources: dict) -> list[str]:
    """Every class the evaluations and their predictions know of (the dataset's classes)."""
    out: set[str] = set()
    for src in sources:
        out |= {str(c) for c in src.get("classes") or []}
    return sorted(out)


METRIC_NAMES = {"macro_f1": "macro-F1", "micro_f1": "micro-F1", "samples_f1": "samples-F1"}


def decision_rule(e: Evaluation) -> str:
    """How an evaluation's answers were decided: for a two-label task its threshold rule (with its target), else the one
    rule every method shares (the most probable label; label sets: the best F1 per label)."""
    m = e.metrics
    if m.get("task") != "binary":
        return "the most probable label" if m.get("task") != "multi-label" else "best F1 per label"
    rule = m.get("threshold_rule") or MOST_PROBABLE
    if rule == "most probable label":  # (written so before ClinBench 0.3)
        rule = MOST_PROBABLE
    return f"{rule} {m['threshold_target']:g}" if m.get("threshold_target") is not None else rule


COLUMNS = (
    "best",
    "other",
    "protocol",
    "metric",
    "n_letters",
    "n_folds",
    "best_score",
    "other_score",
    "difference",
    "diff_ci_low",
    "diff_ci_high",
    "p_bootstrap",
    "p_corrected",
    "p_mcnemar",
    "p_holm",
    "significant",
    "identical",
    "verdict",
    "summary",
    "n_test",
)


def _refused(best: Evaluation, other: Evaluation, metric: str) -> dict:
    """The row of a pair not tested: their answers were decided by different rules, so a paired test would rank the rules."""
    rb, ro = decision_rule(best), decision_rule(other)
    return {
        "best": best.label,
        "other": other.label,
        "metric": metric,
        "significant": False,
        "identical": False,
        "verdict": "not compared",
        "summary": (
            f"not compared: {best.label} answers by the rule '{rb}' and {other.label} by '{ro}'; a test of answers decided "
            "by different rules would compare the rules, not the models. Run both with the same threshold_rule."
        ),
    }


def _verdict(best: str, other: str, res: dict, p_holm: float, name: str = "macro-F1") -> tuple[str, bool]:
    """(the verdict in words, whether the difference is detectable); `name`: the metric, said when it is not macro-F1."""
    if res["identical"]:
        return "identical predictions", False
    intervals = [res["diff_ci"]] + ([res["corrected_ci"]] if res["corrected_ci"] else [])
    if any(lo <= 0 <= hi for lo, hi in intervals) or p_holm >= 0.05 or res["diff"] == 0:
        return "no detectable difference", False
    winner = best if res["diff"] > 0 else other
    said = "" if name == "macro-F1" else f" {name}"
    return f"{winner} better by {fmt_diff(abs(res['diff']))}{said}", True


def _summary(verdict: str, detectable: bool, res: dict, p_holm: float, name: str = "macro-F1") -> str:
    """The comparison in one plain sentence (what the Compare page prints); the CI is the winner's lead when one won."""
    folds = f" in {res['n_folds']} folds" if res["protocol"] == "cv" else ""
    if res["identical"]:
        return f"identical predictions on all {res['n_letters']} shared letters{folds} (p = 1)."
    diff, (lo, hi) = res["diff"], res["diff_ci"]
    if detectable and diff < 0:  # the other one won: its lead, positive
        diff, lo, hi = -diff, -hi, -lo
    said = "" if name == "macro-F1" else f"{name} "
    head = verdict if detectable else f"{verdict}: {said}difference {fmt_diff(diff)}"
    test = "corrected resampled t-test over the folds" if res["p_corrected"] is not None else "paired bootstrap over letters"
    text = f"{head} (95% CI {fmt_diff(lo)} to {fmt_diff(hi)}) on {res['n_letters']} shared letters{folds}; p = {p_holm:.3g} (Holm-adjusted, {test})"
    if res["p_mcnemar"] is not None:
        text += f", McNemar p = {res['p_mcnemar']:.3g}"
    return text + "."


def seed_spread(evals: list[Evaluation], metric: str = "macro_f1") -> pd.DataFrame:
    """Evaluations that differ only in their seed (a run's n_seeds), grouped: `metric` (macro_f1; for label sets also
    micro_f1 or samples_f1) mean, sd, min and max across the seeds, next to the mean width of their 95% CIs (the spread across seeds is a second source of uncertainty: the folds'
    shuffle and, for fine-tuning, the initial weights and data order). Groups of one seed are left out."""
    groups: dict[str, list[Evaluation]] = {}
    for e in evals:
        # labels_per_class stays: a learning curve's sizes are different configurations; learning_curve and n_seeds only
        # say which steps a run made
        cfg = {k: v for k, v in e.manifest.get("config", {}).items() if k not in ("seed", "n_seeds", "learning_curve")}
        key = json.dumps([e.data_hash, e.model, e.method, cfg], sort_keys=True, default=str)
        groups.setdefault(key, []).append(e)
    rows = []
    for members in groups.values():
        if len(members) < 2:
            continue
        f1 = np.array([e.metrics[metric] for e in members])
        widths = [e.metrics[f"{metric}_ci"][1] - e.metrics[f"{metric}_ci"][0] for e in members if e.metrics.get(f"{metric}_ci")]
        rows.append(
            {
                "model": members[0].model,
                "method": members[0].method,
                "labels_per_class": members[0].labels_per_class,
                "n_seeds": len(members),
                "seeds": sorted(e.manifest.get("config", {}).get("seed") for e in members),
                f"mean_{metric}": float(f1.mean()),
                "sd_across_seeds": float(f1.std(ddof=1)),
                "min": float(f1.min()),
                "max": float(f1.max()),
                "mean_ci_width": float(np.mean(widths)) if widths else None,
            }
        )
    return pd.DataFrame(rows)


def train_sizes(a: Evaluation, b: Evaluation) -> dict[tuple[int, int], int]:
    """{(repeat, fold): training letters} of the folds both plans record, the smaller of the two (the corrected t-test's
    n_train: the training side as it was, cut to labels_per_class where it was, not the letters left out of the test)."""
    sa, sb = a.fold_train_sizes, b.fold_train_sizes
    return {k: min(v, sb[k]) for k, v in sa.items() if k in sb}


def fmt_diff(x: float) -> str:
    """A difference of macro-F1 as text: +0.012; one too small for 3 decimals keeps 2 significant digits
    (+0.00042), so no text ever reads +0.000."""
    if x == 0:
        return "0"
    return f"{x:+.3f}" if abs(x) >= 0.0005 else f"{x:+.2g}"


def significance(evals: list[Evaluation], top: int = 4, n_boot: int = 2000, seed: int = 0, metric: str = "macro_f1") -> pd.DataFrame:
    """The best evaluation by `metric` (macro_f1; for label sets also micro_f1 or samples_f1) against each of the next
    `top - 1` that share its letters, paired on those letters.

    Compared: evaluations of the same dataset (data hash) with at least one fold scored on the same
    test letters (engine.evaluation.paired.paired_comparison; a 5x2 and a 5x1 cross-validation meet on repeat 0).
    The p-value behind the verdict is the Nadeau-Bengio corrected t-test under cv (with >= 2 shared
    folds), else the paired bootstrap, Holm-adjusted over the comparisons made. Rows: best, other,
    protocol, the metric, letters and folds shared, both scores on them, the difference with its 95% CI, p-values,
    `verdict` (identical predictions / no detectable difference / "<one> better by +0.0xx") and `summary`
    (the comparison in a sentence). A two-label evaluation whose answers were decided by another threshold rule than the
    best's is not tested: its row says "not compared" and why.
    """
    ranked = sorted(evals, key=lambda e: -e.metrics[metric])
    if len(ranked) < 2:
        return pd.DataFrame()
    best, pb = ranked[0], None
    results, refused = [], []
    for other in ranked[1:]:
        if len(results) + len(refused) >= max(1, top - 1):
            break
        if other.data_hash != best.data_hash:
            continue
        if decision_rule(other) != decision_rule(best):
            refused.append(_refused(best, other, metric))
            continue
        pb = pb if pb is not None else predictions(best)
        po = predictions(other)
        labels = _classes(pb, po, best.manifest["data"], other.manifest["data"])
        try:
            res = paired.paired_comparison(pb, po, labels, metric=metric, n_boot=n_boot, seed=seed, train_sizes=train_sizes(best, other))
        except ValueError:
            continue  # no fold scored on the same letters (another split or plan): not comparable pairwise
        results.append((other, res))
    if not results:
        return pd.DataFrame(refused, columns=list(COLUMNS)) if refused else pd.DataFrame()
    p_used = [res["p_corrected"] if res["p_corrected"] is not None else res["p_bootstrap"] for _, res in results]
    rows = []
    for (other, res), p_holm in zip(results, paired.holm(p_used), strict=True):
        verdict, detectable = _verdict(best.label, other.label, res, p_holm, METRIC_NAMES[metric])
        rows.append(
            {
                "best": best.label,
                "other": other.label,
                "protocol": res["protocol"],
                "metric": metric,
                "n_letters": res["n_letters"],
                "n_folds": res["n_folds"],
                "best_score": res["score_a"],
                "other_score": res["score_b"],
                "difference": res["diff"],
                "diff_ci_low": res["diff_ci"][0],
                "diff_ci_high": res["diff_ci"][1],
                "p_bootstrap": res["p_bootstrap"],
                "p_corrected": res["p_corrected"],
                "p_mcnemar": res["p_mcnemar"],
                "p_holm": p_holm,
                "significant": detectable,
                "identical": res["identical"],
                "verdict": verdict,
                "summary": _summary(verdict, detectable, res, p_holm, METRIC_NAMES[metric]),
                "n_test": res["n_records"],
            }
        )
    return pd.DataFrame(rows + refused, columns=list(COLUMNS))
