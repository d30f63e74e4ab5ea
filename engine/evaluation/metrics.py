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
    """How often each record enters one plain bootstrap resample of the clusters (all records of a cluster move together)."""
    drawn = np.bincount(rng.integers(0, n_clusters, n_clusters), minlength=n_clusters)
    return drawn[ids].astype(float)


class GroupBootstrap:
    """A stratified cluster bootstrap: every resample draws, within each stratum, as many clusters as the stratum holds,
    with replacement; all records of a cluster move together.

    `clusters`: one id per record — the letter's duplicate group (copies share a fold, so their errors move together),
    which also holds a letter's records of every repeat together; None: every record its own cluster. `strata`: one
    value per record (the truth label; for label sets see `label_set_strata`); a cluster's stratum is its first record's.
    Every stratum keeps its number of clusters in every resample, so every class present in the test letters is present
    in every resample and no resample has an empty class."""

    def __init__(self, clusters, strata, n: int, seed: int = 0):
        self.ids, self.n_clusters = cluster_ids(clusters, n)
        self.rng = np.random.default_rng(seed)
        strata = np.zeros(n, dtype=np.int64) if strata is None else np.unique(np.asarray(strata), return_inverse=True)[1].ravel()
        if len(strata) != n:
            raise ValueError(f"strata: one value per record is needed ({n} records, {len(strata)} values)")
        of_cluster = np.full(self.n_clusters, -1, dtype=np.int64)
        first = np.unique(self.ids, return_index=True)[1]
        of_cluster[self.ids[first]] = strata[first]
        self.members = [np.flatnonzero(of_cluster == s) for s in np.unique(of_cluster)]

    def weights(self) -> np.ndarray:
        """How often each record enters the next resample."""
        drawn = np.concatenate([m[self.rng.integers(0, len(m), len(m))] for m in self.members])
        return np.bincount(drawn, minlength=self.n_clusters)[self.ids].astype(float)


def label_set_strata(T: np.ndarray) -> np.ndarray:
    """The stratum of each letter of a label-set task (`T`: letters x labels, 0/1): the rarest of its labels in these
    letters (-1: no label), so every label that is some letter's rarest is present in every resample."""
    T = np.asarray(T)
    counts = T.sum(0)
    rank = np.where(T > 0, counts[None, :], np.iinfo(np.int64).max)
    return np.where(T.any(1), rank.argmin(1), -1) if T.shape[1] else np.full(len(T), -1)


def percentile_ci(values, level: float = 0.95) -> list[float] | None:
    """The percentile interval of bootstrap values, NaN values (an empty denominator in that resample) left out; None
    when no value is left."""
    v = np.asarray(values, dtype=float)
    v = v[~np.isnan(v)]
    if not len(v):
        return None
    alpha = (1 - level) / 2
    return [float(np.quantile(v, alpha)), float(np.quantile(v, 1 - alpha))]


def weighted_confusion(t: np.ndarray, p: np.ndarray, k: int, weights=None) -> np.ndarray:
    return np.bincount(t * k + p, weights=weights, minlength=k * k).reshape(k, k)


def f1_per_class(cm: np.ndarray) -> np.ndarray:
    """F1 of each class from a confusion matrix (rows truth, columns prediction); 0 where a class has neither."""
    tp = np.diag(cm).astype(float)
    denom = (cm.sum(0) + cm.sum(1)).astype(float)
    return np.divide(2 * tp, denom, out=np.zeros_like(tp), where=denom > 0)


def bootstrap_macro_f1(
    y_true, y_pred, n_boot: int = 1000, seed: int = 0, level: float = 0.95, *, labels=None, clusters=None
) -> tuple[float, float]:
    """Percentile CI of macro-F1 by a stratified cluster bootstrap (GroupBootstrap; strata: the true label).

    `clusters` (one id per record: the letter's duplicate group) resamples groups instead of records, so copies of a
    letter, and the R records of a letter scored under R repeats of cross-validation, move together. Every resample's
    macro-F1 averages over the same classes as the point figure (`labels`; None: the union of truth and predictions),
    a class without letters or predictions scoring 0 in both, so the interval is about the headline's own statistic.
    """
    y_true, y_pred = [str(v) for v in y_true], [str(v) for v in y_pred]
    labs = label_list(labels, y_true, y_pred)
    t, p, k = codes(y_true, labs), codes(y_pred, labs), len(labs)
    boot = GroupBootstrap(clusters, t, len(t), seed)
    stats = np.array([f1_per_class(weighted_confusion(t, p, k, boot.weights())).mean() for _ in range(n_boot)])
    lo, hi = percentile_ci(stats, level)
    return lo, hi


def metrics(y_true, y_pred, *, labels=None, clusters=None, n_boot: int = 1000, seed: int = 0) -> dict:
    """All scores of one classifier's predictions, JSON-ready.

    `labels` (all classes of the dataset): per-class rows, the confusion matrix and the macro and
    weighted averages use exactly these classes, so a class never predicted or absent from the test
    letters scores 0 instead of vanishing; None: the sorted union of truth and predictions.
    `clusters`: see `bootstrap_macro_f1` (the CI resamples duplicate groups, not records).
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
    """(micro-F1, macro-F1, samples-F1) of 0/1 matrices, records weighted by `w`. Macro-F1 averages over every label (a label
    with neither letters nor predictions scores 0, as the headline); samples-F1 counts a letter with no label and none
    predicted as 1 (scikit-learn's zero_division=1)."""
    w = np.ones(len(T)) if w is None else w
    both, t_sum, p_sum = (T & P).astype(float), T.astype(float), P.astype(float)
    tp, t_n, p_n = w @ both, w @ t_sum, w @ p_sum
    denom = t_n + p_n
    micro = float(2 * tp.sum() / denom.sum()) if denom.sum() > 0 else 0.0
    macro = float(np.divide(2 * tp, denom, out=np.zeros_like(tp), where=denom > 0).mean()) if len(tp) else 0.0
    per_letter_denom = t_sum.sum(1) + p_sum.sum(1)
    per_letter = np.divide(2 * both.sum(1), per_letter_denom, out=np.ones(len(T)), where=per_letter_denom > 0)
    samples = float(w @ per_letter / w.sum()) if w.sum() > 0 else 0.0
    return micro, macro, samples


def multilabel_metrics(T, P, classes, *, clusters=None, n_boot: int = 1000, seed: int = 0, level: float = 0.95) -> dict:
    """All scores of multi-label predictions (`T`, `P`: letters x labels, 0/1), JSON-ready.

    micro-F1 pools every (letter, label) decision (the BLURB convention for Hallmarks of Cancer: over positive labels);
    macro-F1 averages the F1 of every label of `classes` (a label never predicted nor present scores 0 in the point figure);
    samples-F1 averages each letter's F1 (a letter with no label and none predicted counts 1); subset accuracy: the whole set
    right; Hamming loss: the share of wrong (letter, label) decisions. micro, macro and samples F1 carry a stratified cluster
    bootstrap CI (GroupBootstrap; `clusters`: the letter's duplicate group, one id per record; strata: label_set_strata)."""
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
    boot = GroupBootstrap(clusters, label_set_strata(T), len(T), seed)
    stats = np.array([multilabel_scores(T, P, boot.weights()) for _ in range(n_boot)]).reshape(-1, 3)
    for j, name in enumerate(("micro_f1", "macro_f1", "samples_f1")):
        out[f"{name}_ci"] = percentile_ci(stats[:, j], level) if n_boot else None
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
