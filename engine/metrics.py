"""Scores of predictions: per-class precision/recall/F1, macro/micro/weighted averages, the
confusion matrix, a bootstrap 95% CI for macro-F1, the majority-class baseline, and the paired
comparison of two classifiers on the same letters. Pure functions of labels: nothing here knows
how a prediction was made."""

from __future__ import annotations

import numpy as np
from sklearn.metrics import accuracy_score, confusion_matrix, precision_recall_fscore_support


def _macro_f1_from_confusion(cm: np.ndarray) -> float:
    """Macro-F1 over the classes present in truth or prediction (scikit-learn's default label set)."""
    tp = np.diag(cm).astype(float)
    pred, true = cm.sum(0), cm.sum(1)
    present = (pred + true) > 0
    denom = pred + true
    f1 = np.divide(2 * tp, denom, out=np.zeros_like(tp), where=denom > 0)
    return float(f1[present].mean()) if present.any() else 0.0


def bootstrap_macro_f1(y_true, y_pred, n_boot: int = 1000, seed: int = 0, level: float = 0.95) -> tuple[float, float]:
    """Percentile bootstrap CI of macro-F1, resampling test letters with replacement."""
    labels = sorted(set(y_true) | set(y_pred))
    index = {lab: i for i, lab in enumerate(labels)}
    t = np.array([index[v] for v in y_true])
    p = np.array([index[v] for v in y_pred])
    k, n = len(labels), len(t)
    rng = np.random.default_rng(seed)
    stats = np.empty(n_boot)
    for b in range(n_boot):
        idx = rng.integers(0, n, n)
        cm = np.bincount(t[idx] * k + p[idx], minlength=k * k).reshape(k, k)
        stats[b] = _macro_f1_from_confusion(cm)
    alpha = (1 - level) / 2
    return float(np.quantile(stats, alpha)), float(np.quantile(stats, 1 - alpha))


def metrics(y_true, y_pred, *, n_boot: int = 1000, seed: int = 0) -> dict:
    """All test-split scores of one classifier, JSON-ready."""
    y_true, y_pred = [str(v) for v in y_true], [str(v) for v in y_pred]
    labels = sorted(set(y_true) | set(y_pred))
    p, r, f, s = precision_recall_fscore_support(y_true, y_pred, labels=labels, zero_division=0)
    out = {"n_test": len(y_true), "accuracy": float(accuracy_score(y_true, y_pred))}
    for avg in ("macro", "micro", "weighted"):
        ap, ar, af, _ = precision_recall_fscore_support(y_true, y_pred, average=avg, zero_division=0)
        out[f"{avg}_precision"], out[f"{avg}_recall"], out[f"{avg}_f1"] = float(ap), float(ar), float(af)
    out["macro_f1_ci"] = list(bootstrap_macro_f1(y_true, y_pred, n_boot=n_boot, seed=seed))
    out["per_class"] = {
        lab: {"precision": float(p[i]), "recall": float(r[i]), "f1": float(f[i]), "support": int(s[i])} for i, lab in enumerate(labels)
    }
    out["confusion_matrix"] = {"labels": labels, "matrix": confusion_matrix(y_true, y_pred, labels=labels).tolist()}
    return out


def majority_baseline(y_train, y_test) -> dict:
    """Macro-F1 and accuracy of always predicting the most frequent training label."""
    values, counts = np.unique(np.asarray(y_train, dtype=str), return_counts=True)
    majority = str(values[np.argmax(counts)])
    pred = [majority] * len(y_test)
    _, _, f1, _ = precision_recall_fscore_support([str(v) for v in y_test], pred, average="macro", zero_division=0)
    return {"label": majority, "macro_f1": float(f1), "accuracy": float(accuracy_score([str(v) for v in y_test], pred))}


def paired_macro_f1_test(y_true, pred_a, pred_b, *, n_boot: int = 2000, seed: int = 0, level: float = 0.95) -> dict:
    """Is classifier A's macro-F1 different from B's on the *same* test letters?

    Paired bootstrap: resample test letters with replacement (the same resample for both
    classifiers), giving the distribution of the difference F1(A) - F1(B); its percentile CI,
    and a two-sided p-value from the shifted distribution (how often a resampled difference
    lies at least as far from the observed one as the observed one lies from 0). McNemar's
    exact test on the letters exactly one of the two got right is added as a second opinion.
    """
    from scipy.stats import binomtest

    y_true, pred_a, pred_b = ([str(v) for v in x] for x in (y_true, pred_a, pred_b))
    if not (len(y_true) == len(pred_a) == len(pred_b)) or not y_true:
        raise ValueError("paired test: truth and both predictions must cover the same, non-empty list of test letters")
    labels = sorted(set(y_true) | set(pred_a) | set(pred_b))
    index = {lab: i for i, lab in enumerate(labels)}
    t = np.array([index[v] for v in y_true])
    a = np.array([index[v] for v in pred_a])
    b = np.array([index[v] for v in pred_b])
    k, n = len(labels), len(t)

    def f1(idx, p):
        return _macro_f1_from_confusion(np.bincount(t[idx] * k + p[idx], minlength=k * k).reshape(k, k))

    everything = np.arange(n)
    observed = f1(everything, a) - f1(everything, b)
    rng = np.random.default_rng(seed)
    diffs = np.empty(n_boot)
    for i in range(n_boot):
        idx = rng.integers(0, n, n)
        diffs[i] = f1(idx, a) - f1(idx, b)
    alpha = (1 - level) / 2
    p_boot = (1 + np.sum(np.abs(diffs - observed) >= abs(observed) - 1e-12)) / (n_boot + 1)
    a_right, b_right = a == t, b == t
    only_a, only_b = int(np.sum(a_right & ~b_right)), int(np.sum(~a_right & b_right))
    p_mcnemar = float(binomtest(only_a, only_a + only_b, 0.5).pvalue) if only_a + only_b else 1.0
    return {
        "n_test": n,
        "diff": float(observed),
        "diff_ci": [float(np.quantile(diffs, alpha)), float(np.quantile(diffs, 1 - alpha))],
        "p_bootstrap": float(min(1.0, p_boot)),
        "n_boot": n_boot,
        "only_a_right": only_a,
        "only_b_right": only_b,
        "p_mcnemar": p_mcnemar,
    }


def holm(p_values: list[float]) -> list[float]:
    """Holm-Bonferroni adjusted p-values (same order as given), for several comparisons at once."""
    m = len(p_values)
    order = sorted(range(m), key=lambda i: p_values[i])
    adjusted, running = [0.0] * m, 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * p_values[i]))
        adjusted[i] = running
    return adjusted
