"""Scores of predictions: per-class precision/recall/F1, macro/micro/weighted averages, the
confusion matrix, a bootstrap 95% CI for macro-F1 (records or whole letters resampled), macro-F1
per cross-validation fold, the majority-class baseline; for label sets (multi-label), micro-,
macro- and samples-F1 with CIs, subset accuracy, Hamming loss and per-label rows. Pure functions of
labels: nothing here knows how a prediction was made (engine.paired compares two classifiers)."""

from __future__ import annotations

from collections.abc import Hashable, Sequence

import numpy as np
from sklearn.metrics import accuracy_score, confusion_matrix, precision_recall_fscore_support


def label_list(labels, *columns) -> list[str]:
    """`labels` as given (plus, at the end, any value outside them, so no record silently drops out of the
    confusion matrix); without `labels`, the sorted union of the columns (scikit-learn's default)."""
    seen = set().union(*(set(c) for c in columns))
    if labels is None:
        return sorted(seen)
    given = [str(v) for v in labels]
    return given + sorted(seen - set(given))


def codes(values, labels: list[str]) -> np.ndarray:
    index = {lab: i for i, lab in enumerate(labels)}
    return np.fromiter((index[v] for v in values), dtype=np.int64, count=len(values))


def cluster_ids(clusters, n: int) -> tuple[np.ndarray, int]:
    """(cluster number of each record, number of clusters); every record its own cluster when None."""
    if clusters is None:
        return np.arange(n), n
    if len(clusters) != n:
        raise ValueError(f"clusters: one id per record is needed ({n} records, {len(clusters)} ids)")
    index: dict = {}
    ids = np.fromiter((index.setdefault(c, len(index)) for c in clusters), dtype=np.int64, count=n)
    return ids, len(index)


def resample_weights(rng: np.random.Generator, ids: np.ndarray, n_clusters: int) -> np.ndarray:
    """How often each record enters one bootstrap resample of the clusters (all records of a cluster move together)."""
    drawn = np.bincount(rng.integers(0, n_clusters, n_clusters), minlength=n_clusters)
    return drawn[ids].astype(float)


def weighted_confusion(t: np.ndarray, p: np.ndarray, k: int, weights=None) -> np.ndarray:
    return np.bincount(t * k + p, weights=weights, minlength=k * k).reshape(k, k)


def f1_per_class(cm: np.ndarray) -> np.ndarray:
    """F1 of each class from a confusion matrix (rows truth, columns prediction); 0 where a class has neither."""
    tp = np.diag(cm).astype(float)
    denom = (cm.sum(0) + cm.sum(1)).astype(float)
    return np.divide(2 * tp, denom, out=np.zeros_like(tp), where=denom > 0)


def _macro_f1_from_confusion(cm: np.ndarray) -> float:
    """Macro-F1 over the classes present in truth or prediction (scikit-learn's default label set)."""
    present = (cm.sum(0) + cm.sum(1)) > 0
    return float(f1_per_class(cm)[present].mean()) if present.any() else 0.0


def bootstrap_macro_f1(
    y_true, y_pred, n_boot: int = 1000, seed: int = 0, level: float = 0.95, *, labels=None, clusters=None
) -> tuple[float, float]:
    """Percentile bootstrap CI of macro-F1, resampling test letters with replacement.

    `clusters` (one id per record, e.g. the letter's dataset row) resamples clusters instead of
    records, so the R records of a letter scored under R repeats of cross-validation move together.
    Each resample's macro-F1 averages over the classes present in that resample's truth or
    predictions (a class a resample happens to miss is not counted as an F1 of 0): on the rare test
    set that lacks a class entirely, the CI can then lie above the point estimate made with `labels`.
    """
    y_true, y_pred = [str(v) for v in y_true], [str(v) for v in y_pred]
    labs = label_list(labels, y_true, y_pred)
    t, p, k = codes(y_true, labs), codes(y_pred, labs), len(labs)
    ids, n_clusters = cluster_ids(clusters, len(t))
    rng = np.random.default_rng(seed)
    stats = np.empty(n_boot)
    for b in range(n_boot):
        stats[b] = _macro_f1_from_confusion(weighted_confusion(t, p, k, resample_weights(rng, ids, n_clusters)))
    alpha = (1 - level) / 2
    return float(np.quantile(stats, alpha)), float(np.quantile(stats, 1 - alpha))


def metrics(y_true, y_pred, *, labels=None, clusters=None, n_boot: int = 1000, seed: int = 0) -> dict:
    """All scores of one classifier's predictions, JSON-ready.

    `labels` (all classes of the dataset): per-class rows, the confusion matrix and the macro and
    weighted averages use exactly these classes, so a class never predicted or absent from the test
    letters scores 0 instead of vanishing; None: the sorted union of truth and predictions.
    `clusters`: see `bootstrap_macro_f1` (the CI resamples letters, not records).
    """
    y_true, y_pred = [str(v) for v in y_true], [str(v) for v in y_pred]
    if len(y_true) != len(y_pred):
        raise ValueError(f"metrics: {len(y_true)} true labels but {len(y_pred)} predictions")
    labs = label_list(labels, y_true, y_pred)
    p, r, f, s = precision_recall_fscore_support(y_true, y_pred, labels=labs, zero_division=0)
    out = {"n_test": len(y_true), "accuracy": float(accuracy_score(y_true, y_pred))}
    for avg in ("macro", "micro", "weighted"):
        ap, ar, af, _ = precision_recall_fscore_support(y_true, y_pred, labels=labs, average=avg, zero_division=0)
        out[f"{avg}_precision"], out[f"{avg}_recall"], out[f"{avg}_f1"] = float(ap), float(ar), float(af)
    out["macro_f1_ci"] = list(bootstrap_macro_f1(y_true, y_pred, n_boot=n_boot, seed=seed, labels=labs, clusters=clusters))
    out["per_class"] = {
        lab: {"precision": float(p[i]), "recall": float(r[i]), "f1": float(f[i]), "support": int(s[i])} for i, lab in enumerate(labs)
    }
    out["confusion_matrix"] = {"labels": labs, "matrix": confusion_matrix(y_true, y_pred, labels=labs).tolist()}
    return out


def fold_scores(y_true, y_pred, folds: Sequence[Hashable], labels) -> list[float]:
    """Macro-F1 of each fold (`folds`: one fold id per record, e.g. (repeat, fold)), in sorted fold-id order.

    Averages over `labels` as scikit-learn's f1_score(labels=..., average="macro", zero_division=0) does
    (None: the sorted union of truth and predictions over all folds)."""
    y_true, y_pred = [str(v) for v in y_true], [str(v) for v in y_pred]
    if not len(y_true) == len(y_pred) == len(folds):
        raise ValueError("fold_scores: truth, predictions and fold ids must have one entry per record")
    labs = label_list(labels, y_true, y_pred)
    t, p, k = codes(y_true, labs), codes(y_pred, labs), len(labs)
    members: dict = {}
    for i, fold in enumerate(folds):
        members.setdefault(fold, []).append(i)
    return [float(f1_per_class(weighted_confusion(t[idx], p[idx], k)).mean()) for idx in (members[f] for f in sorted(members))]


def majority_baseline(y_train, y_test) -> dict:
    """Macro-F1 and accuracy of always predicting the most frequent training label."""
    values, counts = np.unique(np.asarray(y_train, dtype=str), return_counts=True)
    majority = str(values[np.argmax(counts)])
    pred = [majority] * len(y_test)
    _, _, f1, _ = precision_recall_fscore_support([str(v) for v in y_test], pred, average="macro", zero_division=0)
    return {"label": majority, "macro_f1": float(f1), "accuracy": float(accuracy_score([str(v) for v in y_test], pred))}


# Multi-label: a letter carries a set of labels (possibly none); truth and predictions are 0/1 matrices, letters x labels.


def multilabel_scores(T: np.ndarray, P: np.ndarray, w: np.ndarray | None = None) -> tuple[float, float, float]:
    """(micro-F1, macro-F1, samples-F1) of 0/1 matrices, records weighted by `w`. Macro-F1 averages over the labels present
    in truth or predictions; samples-F1 counts a letter with no label and none predicted as 1 (scikit-learn's zero_division=1)."""
    w = np.ones(len(T)) if w is None else w
    both, t_sum, p_sum = (T & P).astype(float), T.astype(float), P.astype(float)
    tp, t_n, p_n = w @ both, w @ t_sum, w @ p_sum
    denom = t_n + p_n
    micro = float(2 * tp.sum() / denom.sum()) if denom.sum() > 0 else 0.0
    present = denom > 0
    macro = float((2 * tp[present] / denom[present]).mean()) if present.any() else 0.0
    per_letter_denom = t_sum.sum(1) + p_sum.sum(1)
    per_letter = np.divide(2 * both.sum(1), per_letter_denom, out=np.ones(len(T)), where=per_letter_denom > 0)
    samples = float(w @ per_letter / w.sum()) if w.sum() > 0 else 0.0
    return micro, macro, samples


def multilabel_metrics(T, P, classes, *, clusters=None, n_boot: int = 1000, seed: int = 0, level: float = 0.95) -> dict:
    """All scores of multi-label predictions (`T`, `P`: letters x labels, 0/1), JSON-ready.

    micro-F1 pools every (letter, label) decision (the BLURB convention for Hallmarks of Cancer: over positive labels);
    macro-F1 averages the F1 of every label of `classes` (a label never predicted nor present scores 0 in the point figure);
    samples-F1 averages each letter's F1 (a letter with no label and none predicted counts 1); subset accuracy: the whole set
    right; Hamming loss: the share of wrong (letter, label) decisions. micro, macro and samples F1 carry a bootstrap CI
    resampling letters (`clusters`: one id per record, so a letter's records of every repeat move together)."""
    from sklearn.metrics import f1_score, hamming_loss

    T, P = np.asarray(T, dtype=np.int8), np.asarray(P, dtype=np.int8)
    if T.shape != P.shape or T.shape[1] != len(classes):
        raise ValueError(f"multilabel_metrics: truth {T.shape} and predictions {P.shape} must be letters x {len(classes)} labels")
    p, r, f, s = precision_recall_fscore_support(T, P, average=None, zero_division=0)
    out = {"n_test": len(T), "subset_accuracy": float(np.mean((T == P).all(1)))}
    out["accuracy"] = out["subset_accuracy"]  # tables read one accuracy for every task: here the whole set right
    for avg in ("micro", "macro", "weighted"):
        ap, ar, af, _ = precision_recall_fscore_support(T, P, average=avg, zero_division=0)
        out[f"{avg}_precision"], out[f"{avg}_recall"], out[f"{avg}_f1"] = float(ap), float(ar), float(af)
    out["samples_f1"] = float(f1_score(T, P, average="samples", zero_division=1.0))
    out["hamming_loss"] = float(hamming_loss(T, P))
    ids, n_clusters = cluster_ids(clusters, len(T))
    rng = np.random.default_rng(seed)
    stats = np.array([multilabel_scores(T, P, resample_weights(rng, ids, n_clusters)) for _ in range(n_boot)]).reshape(-1, 3)
    alpha = (1 - level) / 2
    for j, name in enumerate(("micro_f1", "macro_f1", "samples_f1")):
        out[f"{name}_ci"] = [float(np.quantile(stats[:, j], q)) for q in (alpha, 1 - alpha)] if n_boot else None
    out["per_label"] = [
        {
            "label": lab,
            "precision": float(p[j]),
            "recall": float(r[j]),
            "f1": float(f[j]),
            "support": int(s[j]),
            "predicted": int(P[:, j].sum()),
        }
        for j, lab in enumerate(classes)
    ]
    out["per_class"] = {row["label"]: {k: row[k] for k in ("precision", "recall", "f1", "support")} for row in out["per_label"]}
    out["labels_per_letter"] = {"truth": float(T.sum(1).mean()), "predicted": float(P.sum(1).mean())}
    return out


def multilabel_fold_scores(T: np.ndarray, P: np.ndarray, folds: Sequence[Hashable]) -> dict[str, list[float]]:
    """Micro- and macro-F1 of each fold (one fold id per record), in sorted fold-id order; macro over every label."""
    from sklearn.metrics import f1_score

    members: dict = {}
    for i, fold in enumerate(folds):
        members.setdefault(fold, []).append(i)
    idx = [members[f] for f in sorted(members)]
    return {avg: [float(f1_score(T[i], P[i], average=avg, zero_division=0)) for i in idx] for avg in ("micro", "macro")}
