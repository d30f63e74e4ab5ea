"""Scores of predictions: per-class precision/recall/F1, macro/micro/weighted averages, the
confusion matrix, a bootstrap 95% CI for macro-F1 (records or whole letters resampled), macro-F1
per cross-validation fold, the Nadeau-Bengio corrected resampled t-test, the majority-class
baseline, and the paired comparison of two classifiers' predictions.json records on the same
letters and folds. Pure functions of labels: nothing here knows how a prediction was made."""

from __future__ import annotations

import math
from collections.abc import Hashable, Sequence

import numpy as np
from sklearn.metrics import accuracy_score, confusion_matrix, precision_recall_fscore_support


def _label_set(labels, *columns) -> list[str]:
    """`labels` as given (plus, at the end, any value outside them, so no record silently drops out of the
    confusion matrix); without `labels`, the sorted union of the columns (scikit-learn's default)."""
    seen = set().union(*(set(c) for c in columns))
    if labels is None:
        return sorted(seen)
    given = [str(v) for v in labels]
    return given + sorted(seen - set(given))


def _codes(values, labels: list[str]) -> np.ndarray:
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


def _confusion(t: np.ndarray, p: np.ndarray, k: int, weights=None) -> np.ndarray:
    return np.bincount(t * k + p, weights=weights, minlength=k * k).reshape(k, k)


def _f1_per_class(cm: np.ndarray) -> np.ndarray:
    """F1 of each class from a confusion matrix (rows truth, columns prediction); 0 where a class has neither."""
    tp = np.diag(cm).astype(float)
    denom = (cm.sum(0) + cm.sum(1)).astype(float)
    return np.divide(2 * tp, denom, out=np.zeros_like(tp), where=denom > 0)


def _macro_f1_from_confusion(cm: np.ndarray) -> float:
    """Macro-F1 over the classes present in truth or prediction (scikit-learn's default label set)."""
    present = (cm.sum(0) + cm.sum(1)) > 0
    return float(_f1_per_class(cm)[present].mean()) if present.any() else 0.0


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
    labs = _label_set(labels, y_true, y_pred)
    t, p, k = _codes(y_true, labs), _codes(y_pred, labs), len(labs)
    ids, n_clusters = cluster_ids(clusters, len(t))
    rng = np.random.default_rng(seed)
    stats = np.empty(n_boot)
    for b in range(n_boot):
        stats[b] = _macro_f1_from_confusion(_confusion(t, p, k, resample_weights(rng, ids, n_clusters)))
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
    labs = _label_set(labels, y_true, y_pred)
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
    labs = _label_set(labels, y_true, y_pred)
    t, p, k = _codes(y_true, labs), _codes(y_pred, labs), len(labs)
    members: dict = {}
    for i, fold in enumerate(folds):
        members.setdefault(fold, []).append(i)
    return [float(_f1_per_class(_confusion(t[idx], p[idx], k)).mean()) for idx in (members[f] for f in sorted(members))]


def corrected_ttest(diffs, n_train: float, n_test: float, level: float = 0.95) -> dict:
    """Nadeau & Bengio's (2003) corrected resampled t-test of per-fold score differences (A - B).

    The folds' training sets overlap, so the plain t-test's variance var/k is too small; the
    corrected variance is (1/k + n_test/n_train) * var(diffs, ddof=1), with k the number of folds
    (repeats x folds), t = mean / sqrt(corrected variance) on k - 1 degrees of freedom, and a
    two-sided p (as scikit-learn's example plot_grid_search_stats.py, but two-sided). The CI is
    mean ± t_{k-1} quantile x corrected standard error. All differences equal (zero variance):
    p = 1.0 (t = 0) when they are all 0, else p = 0.0 (t = ±inf), never NaN.
    """
    from scipy.stats import t as student

    d = np.asarray(diffs, dtype=float)
    k = len(d)
    if k < 2:
        raise ValueError(f"corrected t-test: needs at least 2 fold differences, got {k}")
    if not (n_train > 0 and n_test > 0):
        raise ValueError(f"corrected t-test: n_train and n_test must be positive (got {n_train}, {n_test})")
    mean, df = float(d.mean()), k - 1
    se = math.sqrt((1 / k + n_test / n_train) * float(np.var(d, ddof=1)))
    if se <= 1e-12 or np.allclose(d, d[0], rtol=0, atol=1e-12):
        zero = abs(mean) <= 1e-12
        t_stat, p, ci = (0.0 if zero else math.copysign(math.inf, mean)), (1.0 if zero else 0.0), [mean, mean]
    else:
        t_stat = mean / se
        p = float(min(1.0, 2 * student.sf(abs(t_stat), df)))
        half = float(student.ppf(1 - (1 - level) / 2, df)) * se
        ci = [mean - half, mean + half]
    return {"t": float(t_stat), "p": p, "df": df, "mean": mean, "se": se, "ci": ci, "k": k, "n_train": n_train, "n_test": n_test}


def majority_baseline(y_train, y_test) -> dict:
    """Macro-F1 and accuracy of always predicting the most frequent training label."""
    values, counts = np.unique(np.asarray(y_train, dtype=str), return_counts=True)
    majority = str(values[np.argmax(counts)])
    pred = [majority] * len(y_test)
    _, _, f1, _ = precision_recall_fscore_support([str(v) for v in y_test], pred, average="macro", zero_division=0)
    return {"label": majority, "macro_f1": float(f1), "accuracy": float(accuracy_score([str(v) for v in y_test], pred))}


def _records(p: dict, name: str) -> dict[tuple[int, int], tuple[int, str, str]]:
    """{(repeat, test_index): (fold, truth, prediction)} of one predictions.json (older ones: repeat = fold = 0)."""
    idx, y_true, y_pred = p["test_index"], p["y_true"], p["y_pred"]
    m = len(idx)
    repeat, fold = p.get("repeat") or [0] * m, p.get("fold") or [0] * m
    if not len(y_true) == len(y_pred) == len(repeat) == len(fold) == m:
        raise ValueError(f"paired comparison: predictions {name} has lists of different lengths (test_index has {m})")
    out = {}
    for r, f, i, t, pr in zip(repeat, fold, idx, y_true, y_pred):
        if (int(r), int(i)) in out:
            raise ValueError(f"paired comparison: predictions {name} scores letter {i} twice in repeat {r}")
        out[int(r), int(i)] = (int(f), str(t), str(pr))
    return out


def _fold_rows(recs: dict) -> dict[tuple[int, int], frozenset]:
    rows: dict = {}
    for (r, i), (f, _, _) in recs.items():
        rows.setdefault((r, f), set()).add(i)
    return {k: frozenset(v) for k, v in rows.items()}


def paired_comparison(a: dict, b: dict, labels=None, *, n_boot: int = 2000, seed: int = 0, level: float = 0.95) -> dict:
    """Is A's macro-F1 different from B's on the same letters? `a`, `b`: two predictions.json records.

    Only folds both scored with identical test letters count (a fold is its (repeat, fold) id and its
    set of test rows; a holdout is repeat 0, fold 0), so a 5x2 and a 5x1 cross-validation are compared
    on repeat 0; records are matched by (repeat, test_index). Returned:

    * diff: pooled macro-F1 (over `labels`) of A minus B over the common records;
    * diff_ci, p_bootstrap: paired bootstrap over letters (a letter's records of every repeat move
      together, the same resample for both), percentile CI and a two-sided p from the shifted
      distribution; each resample averages over the classes present in its truth or either prediction;
    * cv with >= 2 common folds: fold_diffs (macro-F1 per fold, A - B), and the Nadeau-Bengio corrected
      t-test on them (p_corrected, t, df, corrected_ci) with n_test = mean fold size and n_train =
      n_letters - n_test; this is the p to trust under CV, because the bootstrap ignores that the
      classifiers were trained on overlapping sets;
    * holdout: p_mcnemar, McNemar's exact test on the letters exactly one of the two got right;
    * identical: both predicted the same label for every common record.

    Raises ValueError when the two share no letter (no common fold).
    """
    from scipy.stats import binomtest

    ra, rb = _records(a, "A"), _records(b, "B")
    fa, fb = _fold_rows(ra), _fold_rows(rb)
    common = sorted(k for k in fa if fb.get(k) == fa[k])
    if not common:
        raise ValueError(
            "paired comparison: the two evaluations share no letters — no fold (repeat, fold) has the same test letters in both, "
            "so they were scored on different splits or data and cannot be compared pairwise"
        )
    shared = set(common)
    keys = sorted(key for key in ra if (key[0], ra[key][0]) in shared)
    if any(ra[key][1] != rb[key][1] for key in keys):
        raise ValueError("paired comparison: the two evaluations give different true labels for the same letters (different data)")
    folds = [(r, ra[(r, i)][0]) for r, i in keys]
    y_true = [ra[key][1] for key in keys]
    pred_a, pred_b = [ra[key][2] for key in keys], [rb[key][2] for key in keys]
    labs = _label_set(labels, y_true, pred_a, pred_b)
    t, pa, pb, k = _codes(y_true, labs), _codes(pred_a, labs), _codes(pred_b, labs), len(labs)
    letters = [i for _, i in keys]
    ids, n_letters = cluster_ids(letters, len(keys))

    f1_a, f1_b = (float(_f1_per_class(_confusion(t, p, k)).mean()) for p in (pa, pb))
    identical = pred_a == pred_b
    observed = 0.0 if identical else f1_a - f1_b
    rng = np.random.default_rng(seed)
    diffs = np.empty(n_boot)
    for i in range(n_boot):
        w = resample_weights(rng, ids, n_letters)
        cm_a, cm_b = _confusion(t, pa, k, w), _confusion(t, pb, k, w)
        present = (cm_a.sum(1) + cm_a.sum(0) + cm_b.sum(0)) > 0
        diffs[i] = _f1_per_class(cm_a)[present].mean() - _f1_per_class(cm_b)[present].mean()
    alpha = (1 - level) / 2
    p_boot = (1 + np.sum(np.abs(diffs - observed) >= abs(observed) - 1e-12)) / (n_boot + 1)
    protocols = {a.get("protocol") or "holdout", b.get("protocol") or "holdout"}
    out = {
        "protocol": protocols.pop() if len(protocols) == 1 else "mixed",
        "n_letters": n_letters,
        "n_records": len(keys),
        "n_folds": len(common),
        "macro_f1_a": f1_a,
        "macro_f1_b": f1_b,
        "diff": float(observed),
        "diff_ci": [0.0, 0.0] if identical else [float(np.quantile(diffs, alpha)), float(np.quantile(diffs, 1 - alpha))],
        "p_bootstrap": float(min(1.0, p_boot)),
        "n_boot": n_boot,
        "identical": identical,
        "fold_diffs": None,
        "p_corrected": None,
        "t": None,
        "df": None,
        "corrected_ci": None,
        "p_mcnemar": None,
        "only_a_right": None,
        "only_b_right": None,
    }
    if out["protocol"] == "cv" and len(common) >= 2:
        fold_diffs = np.subtract(fold_scores(y_true, pred_a, folds, labs), fold_scores(y_true, pred_b, folds, labs))
        n_test = float(np.mean([len(fa[f]) for f in common]))
        if n_letters - n_test > 0:
            tt = corrected_ttest(fold_diffs, n_letters - n_test, n_test, level=level)
            out.update(fold_diffs=fold_diffs.tolist(), p_corrected=tt["p"], t=tt["t"], df=tt["df"], corrected_ci=tt["ci"])
    if out["protocol"] in ("holdout", "fixed"):  # one test split
        a_right, b_right = pa == t, pb == t
        only_a, only_b = int(np.sum(a_right & ~b_right)), int(np.sum(~a_right & b_right))
        p_mcnemar = float(binomtest(only_a, only_a + only_b, 0.5).pvalue) if only_a + only_b else 1.0
        out.update(p_mcnemar=p_mcnemar, only_a_right=only_a, only_b_right=only_b)
    return out


def holm(p_values: list[float]) -> list[float]:
    """Holm-Bonferroni adjusted p-values (same order as given), for several comparisons at once."""
    m = len(p_values)
    order = sorted(range(m), key=lambda i: p_values[i])
    adjusted, running = [0.0] * m, 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * p_values[i]))
        adjusted[i] = running
    return adjusted


# Multi-label: a letter carries a set of labels (possibly none); truth and predictions are 0/1 matrices, letters x labels.


def indicator(label_sets, classes) -> np.ndarray:
    """One row per letter, one 0/1 column per class of `classes`: the labels each letter carries (or is predicted)."""
    pos = {c: j for j, c in enumerate(classes)}
    out = np.zeros((len(label_sets), len(classes)), dtype=np.int8)
    for i, labs in enumerate(label_sets):
        for lab in labs:
            out[i, pos[lab]] = 1
    return out


def _multilabel_scores(T: np.ndarray, P: np.ndarray, w: np.ndarray | None = None) -> tuple[float, float, float]:
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
    stats = np.array([_multilabel_scores(T, P, resample_weights(rng, ids, n_clusters)) for _ in range(n_boot)]).reshape(-1, 3)
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
