"""Is one model better than another? Comparisons across stored evaluations: one family of paired tests (every pair of a
few evaluations, else each against the best), ranked and tested on the letters and folds they all share (engine.paired:
paired cluster bootstrap; under cv the Nadeau-Bengio corrected resampled t-test; Holm-adjusted over the family; macro-F1,
or for label sets the chosen headline), each verdict in plain words beside the interval of its own test, and the spread
of macro-F1 across seeds (runs with n_seeds > 1)."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd

from engine.evaluation import headline, paired
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
    "ci_level",
    "test",
    "family",
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


ALPHA = 0.05
ALL_PAIRS_UP_TO = 4  # this many evaluations or fewer: every pair is tested; more: every one against the best


def _test_name(res: dict) -> str:
    return "corrected resampled t-test over the folds" if res["p_corrected"] is not None else "paired cluster bootstrap over the letters"


def _verdict(best: str, other: str, res: dict, p_holm: float, ci: list[float], name: str = "macro-F1") -> tuple[str, bool]:
    """(the verdict in words, whether the difference is detectable): detectable when the Holm-adjusted p is below 0.05 and
    the interval of the same test (at its Holm level) leaves out 0; `name`: the metric, said when it is not macro-F1."""
    if res["identical"]:
        return "identical predictions", False
    lo, hi = ci
    if lo <= 0 <= hi or p_holm >= ALPHA or res["diff"] == 0:
        return "no detectable difference", False
    winner = best if res["diff"] > 0 else other
    said = "" if name == "macro-F1" else f" {name}"
    return f"{winner} better by {fmt_diff(abs(res['diff']))}{said}", True


def _summary(
    verdict: str, detectable: bool, res: dict, p_holm: float, ci: list[float], level: float, family: str, name: str = "macro-F1"
) -> str:
    """The comparison in one plain sentence (what the Compare page prints): the difference, the interval of the test behind
    the p-value (the winner's lead when one won), the p and the family of tests it was adjusted over."""
    folds = f" in {res['n_folds']} folds" if res["protocol"] == "cv" else ""
    if res["identical"]:
        return f"identical predictions on all {res['n_letters']} shared letters{folds} (p = 1)."
    diff, (lo, hi) = res["diff"], ci
    if detectable and diff < 0:  # the other one won: its lead, positive
        diff, lo, hi = -diff, -hi, -lo
    said = "" if name == "macro-F1" else f"{name} "
    head = verdict if detectable else f"{verdict}: {said}difference {fmt_diff(diff)}"
    text = (
        f"{head} ({level:.4g}% CI {fmt_diff(lo)} to {fmt_diff(hi)}, {_test_name(res)}) on {res['n_letters']} shared letters{folds}; "
        f"p = {p_holm:.3g}, Holm-adjusted over {family}"
    )
    if res["p_mcnemar"] is not None:
        text += f"; McNemar p = {res['p_mcnemar']:.3g} (unadjusted)"
    return text + "."


def _headline(evals: list[Evaluation], chosen: str | None) -> str:
    """The metric compared: `chosen`, else the headline of the evaluations' task (one dataset's are all of one kind)."""
    return headline.metric(evals[0].metrics.get("task") if evals else None, chosen)


def seed_spread(evals: list[Evaluation], metric: str | None = None) -> pd.DataFrame:
    """Evaluations that differ only in their seed (a run's n_seeds), grouped: `metric` (None: the task's headline,
    engine.evaluation.headline; for label sets also micro_f1 or samples_f1) mean, sd, min and max across the seeds, next to the mean width of their 95% CIs (the spread across seeds is a second source of uncertainty: the folds'
    shuffle and, for fine-tuning, the initial weights and data order). Groups of one seed are left out."""
    metric = _headline(evals, metric)
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


def _family(evals: list[Evaluation], metric: str) -> tuple[list[Evaluation], list[dict], list[dict], list[dict]]:
    """(the evaluations tested together, their predictions, the folds they all share, rows of those not tested): the
    evaluations of the leading one's dataset (by `metric`) decided by its rule, that share at least one fold (the same
    (repeat, fold) and test letters) with all taken before them, in order of `metric`."""
    ranked = sorted(evals, key=lambda e: -e.metrics[metric])
    lead = ranked[0]
    members, preds, refused = [], [], []
    shared: dict | None = None
    for e in ranked:
        if e.data_hash != lead.data_hash:
            continue
        if decision_rule(e) != decision_rule(lead):
            refused.append(_refused(lead, e, metric))
            continue
        p = predictions(e)
        rows = paired.fold_rows(p)
        common = rows if shared is None else {k: v for k, v in shared.items() if rows.get(k) == v}
        if not common:
            continue  # no fold scored on the same letters (another split or plan): not comparable pairwise
        members.append(e)
        preds.append(p)
        shared = common
    return members, preds, [shared or {}], refused


def significance(
    evals: list[Evaluation], top: int | None = None, n_boot: int = 2000, seed: int = 0, metric: str | None = None
) -> pd.DataFrame:
    """Which evaluations differ by `metric` (None: the task's headline, engine.evaluation.headline: macro_f1, for label
    sets micro_f1; for label sets also macro_f1 or samples_f1 when chosen), one family of paired
    tests with one Holm adjustment.

    The family: the evaluations of the leading one's dataset (data hash), decided by its rule, that share folds scored on
    the same test letters (a 5x2 and a 5x1 cross-validation meet on repeat 0). Every one is ranked by `metric` on the
    folds all of them share, and tested on those same letters and repeats (engine.evaluation.paired.paired_comparison),
    so the rank never rests on letters the test did not see. With up to ALL_PAIRS_UP_TO evaluations every pair is tested,
    else each against the best (`top`: at most this many evaluations, the best first; None: all). The p-value behind a
    verdict is the Nadeau-Bengio corrected t-test under cv (>= 2 shared folds), else the paired cluster bootstrap;
    Holm-adjusted over the whole family (pairs with identical predictions need no test: p = 1, not counted). The interval beside it is the same test's (the t-test's over folds under cv), at
    the level that matches the adjusted p (Holm's step level 1 - 0.05/(m - j) for the j-th smallest p when the family
    rejects it, else Bonferroni's 1 - 0.05/m), so the interval leaves out 0 exactly when the verdict says a difference.

    Rows: best (the higher ranked of the pair), other, protocol, the metric, letters and folds shared, both scores on them,
    the difference with the interval (diff_ci_low, diff_ci_high, ci_level in %), p-values, p_holm, test, family, `verdict`
    (identical predictions / no detectable difference / "<one> better by +0.0xx") and `summary` (the comparison in a
    sentence). A two-label evaluation whose answers were decided by another threshold rule than the leading one's is not
    tested: its row says "not compared" and why.
    """
    if len(evals) < 2:
        return pd.DataFrame()
    metric = _headline(evals, metric)
    members, preds, (shared,), refused = _family(evals, metric)
    if top is not None:
        members, preds = members[: max(2, top)], preds[: max(2, top)]
    if len(members) < 2:
        return pd.DataFrame(refused, columns=list(COLUMNS)) if refused else pd.DataFrame()
    labels = _classes(*preds, *(e.manifest["data"] for e in members))
    folds = sorted(shared)
    scores = [paired.score_on(p, labels, metric, folds) for p in preds]
    order = sorted(range(len(members)), key=lambda i: -scores[i])
    every = len(members) <= ALL_PAIRS_UP_TO
    pairs = (
        [(order[i], order[j]) for i in range(len(order)) for j in range(i + 1, len(order))] if every else [(order[0], j) for j in order[1:]]
    )
    results = [
        (
            i,
            j,
            paired.paired_comparison(
                preds[i],
                preds[j],
                labels,
                metric=metric,
                n_boot=n_boot,
                seed=seed,
                folds=folds,
                train_sizes=train_sizes(members[i], members[j]),
            ),
        )
        for i, j in pairs
    ]
    # the family: every pair whose predictions differ (identical predictions need no test and are not counted)
    tested = [k for k, (_, _, res) in enumerate(results) if not res["identical"]]
    m = len(tested)
    family = (
        "1 test (the only one)"
        if m == 1
        else f"all {m} pairwise tests of {len(members)} evaluations"
        if every
        else f"{m} tests of every evaluation against the best"
    )
    p_used = [res["p_corrected"] if res["p_corrected"] is not None else res["p_bootstrap"] for _, _, res in results]
    adjusted = [1.0] * len(results)
    for k, p_holm in zip(tested, paired.holm([p_used[k] for k in tested]), strict=True):
        adjusted[k] = p_holm
    step = {k: m - r for r, k in enumerate(sorted(tested, key=lambda k: p_used[k]))}
    rows = []
    for k, ((i, j, res), p_holm) in enumerate(zip(results, adjusted, strict=True)):
        m_left = step.get(k, 1) if p_holm < ALPHA else max(1, m)  # Holm's step level when rejected, else Bonferroni's
        level = 1 - ALPHA / m_left
        ci = [0.0, 0.0] if res["identical"] else paired.interval(res, level)
        best, other = members[i], members[j]
        verdict, detectable = _verdict(best.label, other.label, res, p_holm, ci, METRIC_NAMES[metric])
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
                "diff_ci_low": ci[0],
                "diff_ci_high": ci[1],
                "p_bootstrap": res["p_bootstrap"],
                "p_corrected": res["p_corrected"],
                "p_mcnemar": res["p_mcnemar"],
                "p_holm": p_holm,
                "ci_level": 100 * level,
                "test": _test_name(res),
                "family": family,
                "significant": detectable,
                "identical": res["identical"],
                "verdict": verdict,
                "summary": _summary(verdict, detectable, res, p_holm, ci, 100 * level, family, METRIC_NAMES[metric]),
                "n_test": res["n_records"],
            }
        )
    return pd.DataFrame(rows + refused, columns=list(COLUMNS))
