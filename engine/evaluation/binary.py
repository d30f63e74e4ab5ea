"""Binary tasks (two labels, e.g. refer or not): the positive label, the operating threshold, and the figures clinicians read.

* `positive_label`: the option's label, or the rarer label (ties: the last in sorted order), the one a screen looks for;
* `choose_threshold`: the threshold on P(positive) from probabilities of *training* letters (cross-validated inside
  them), by the rule of engine.options.groups.DecisionOptions: the best F1 of the positive label, or the highest threshold
  reaching a target sensitivity, or the lowest reaching a target specificity; its `best_threshold` (the best F1) also
  sets each label's threshold of a multi-label task (engine.estimators, engine.finetune.head);
* `binary_metrics`: sensitivity, specificity, PPV, NPV of the predictions at that threshold and ROC-AUC, PR-AUC (average precision) of the
  probabilities, each with a 95% stratified cluster bootstrap CI resampling duplicate groups (engine.evaluation.metrics.
  GroupBootstrap: positive and negative groups drawn apart, so both are in every resample; a resample whose denominator is
  empty, e.g. no letter predicted positive for the PPV, is left out of the interval, never counted as 0).
"""

from __future__ import annotations

from collections import Counter

import numpy as np

from engine.errors import DataError
from engine.evaluation.metrics import GroupBootstrap, percentile_ci


def is_two_label(dataset) -> bool:
    """Whether a dataset is a two-label task (one label per letter, two labels): the task whose operating threshold is
    chosen and whose figures are sensitivity, specificity, PPV, NPV and the AUCs."""
    return not dataset.multi_label and len(dataset.classes) == 2


def positive_label(classes: list[str], labels, option: str | None) -> str:
    """The label counted as positive: `option`, or the rarer of the two (ties: the last in sorted order)."""
    if option is not None:
        if option not in classes:
            raise DataError(
                f"positive_label {option!r} is not a label of this dataset ({', '.join(map(repr, classes))}); choose one of them."
            )
        return option
    counts = Counter(str(v) for v in labels)
    return min(sorted(classes, reverse=True), key=lambda c: counts[c])


def _cuts(p: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(candidate thresholds high to low, true and false positives at each): each distinct probability lets every letter
    with it through at once (predicted positive when p >= threshold)."""
    order = np.argsort(-p, kind="stable")
    ps, ys = p[order], y[order]
    last = np.r_[ps[1:] != ps[:-1], True]
    return ps[last], np.cumsum(ys)[last].astype(float), np.cumsum(1 - ys)[last].astype(float)


def best_threshold(p: np.ndarray, y: np.ndarray) -> float:
    """The threshold with the best F1 of the positive letters (`y`: 1) on these probabilities; 0.5 when none is positive.
    Ties go to the higher threshold. (One label of a multi-label task, or a two-label task's best-f1 rule.)"""
    p, y = np.asarray(p, dtype=float), np.asarray(y, dtype=int)
    if y.sum() == 0:
        return 0.5
    cuts, tp, fp = _cuts(p, y)
    return float(cuts[int(np.argmax(2 * tp / (tp + fp + y.sum())))])


def choose_threshold(p: np.ndarray, y: np.ndarray, rule: str = "best-f1", target: float = 0.9) -> float:
    """The threshold on P(positive) (`y`: 1 for positive letters): predicted positive when p >= threshold. 0.5 when the
    letters hold a single label."""
    p, y = np.asarray(p, dtype=float), np.asarray(y, dtype=int)
    if y.min() == y.max():
        return 0.5
    if rule == "best-f1":
        return best_threshold(p, y)
    cuts, tp, fp = _cuts(p, y)
    pos, neg = y.sum(), len(y) - y.sum()
    if rule == "sensitivity":  # the highest threshold whose sensitivity reaches the target
        return float(cuts[int(np.argmax(tp / pos >= target))])
    if rule == "specificity":  # the lowest threshold whose specificity still reaches the target
        ok = np.flatnonzero(1 - fp / neg >= target)
        return float(cuts[ok[-1]]) if len(ok) else float(cuts[0])
    raise ValueError(f"threshold rule {rule!r}: use best-f1, sensitivity or specificity")


def _rates(y: np.ndarray, pred: np.ndarray, w: np.ndarray, empty: float = 0.0) -> dict[str, float]:
    """Sensitivity, specificity, PPV, NPV; `empty` where a denominator is empty (bootstrap resamples: NaN, left out)."""
    tp, fp = w @ (y & pred), w @ ((1 - y) & pred)
    fn, tn = w @ (y & (1 - pred)), w @ ((1 - y) & (1 - pred))

    def ratio(a, b):
        return float(a / b) if b > 0 else empty

    return {"sensitivity": ratio(tp, tp + fn), "specificity": ratio(tn, tn + fp), "ppv": ratio(tp, tp + fp), "npv": ratio(tn, tn + fn)}


def _aucs(y: np.ndarray, p: np.ndarray, w: np.ndarray) -> dict[str, float]:
    from sklearn.metrics import average_precision_score, roc_auc_score

    keep = w > 0
    yk, pk, wk = y[keep], p[keep], w[keep]
    if yk.min() == yk.max():
        return {"roc_auc": float("nan"), "pr_auc": float("nan")}
    return {"roc_auc": float(roc_auc_score(yk, pk, sample_weight=wk)), "pr_auc": float(average_precision_score(yk, pk, sample_weight=wk))}


def binary_metrics(y, p, pred, *, clusters=None, n_boot: int = 1000, seed: int = 0, level: float = 0.95) -> dict:
    """The binary figures of the predictions `pred` (1: positive; each fold's p >= its threshold) and the probabilities
    `p` of the positive label, against the truth `y` (1: positive)."""
    y, p, pred = np.asarray(y, dtype=np.int64), np.asarray(p, dtype=float), np.asarray(pred, dtype=np.int64)
    ones = np.ones(len(y))
    out = {**_rates(y, pred, ones), **_aucs(y, p, ones)}
    boot = GroupBootstrap(clusters, y, len(y), seed)  # strata: positive or not, so both are in every resample
    draws = []
    for _ in range(n_boot):
        w = boot.weights()
        draws.append({**_rates(y, pred, w, empty=float("nan")), **_aucs(y, p, w)})
    for name in ("sensitivity", "specificity", "ppv", "npv", "roc_auc", "pr_auc"):
        out[f"{name}_ci"] = percentile_ci([d[name] for d in draws], level)
    return out


def curves(y, p) -> dict:
    """ROC and precision-recall curves of P(positive) (for charts): {"roc": {fpr, tpr}, "pr": {recall, precision}}."""
    from sklearn.metrics import precision_recall_curve, roc_curve

    fpr, tpr, _ = roc_curve(y, p)
    precision, recall, _ = precision_recall_curve(y, p)
    return {
        "roc": {"fpr": fpr.round(4).tolist(), "tpr": tpr.round(4).tolist()},
        "pr": {"recall": recall.round(4).tolist(), "precision": precision.round(4).tolist()},
    }


def one_hot(positive: np.ndarray, classes: list[str], pos: str) -> np.ndarray:
    """Predictions as a 0/1 matrix letters x classes: the positive label where `positive`, the other label elsewhere."""
    j = classes.index(pos)
    out = np.zeros((len(positive), 2), dtype=np.int8)
    out[:, j], out[:, 1 - j] = positive, ~np.asarray(positive, dtype=bool)
    return out
