"""Paired tests: is classifier A's score different from B's on the same letters and folds?

Two predictions.json records are matched by (repeat, letter) on the folds both scored with the same test letters; the
difference of one score (macro-F1 for one label per letter; micro-, macro- or samples-F1 for label sets) gets a paired
cluster bootstrap CI over duplicate groups, under cv the Nadeau-Bengio corrected resampled t-test on the per-fold differences, under a
single test split McNemar's exact test on the letters exactly one of the two got right (the whole label set, for label
sets), and `holm` adjusts several comparisons' p-values. Pure functions of labels, as engine.metrics.
"""

from __future__ import annotations

import math

import numpy as np

from engine.data.labels import indicator
from engine.evaluation.metrics import (
    GroupBootstrap,
    codes,
    f1_per_class,
    fold_scores,
    label_list,
    label_set_strata,
    multilabel_scores,
    weighted_confusion,
)

LABEL_SET_METRICS = ("micro_f1", "macro_f1", "samples_f1")  # the order of metrics.multilabel_scores


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


def holm(p_values: list[float]) -> list[float]:
    """Holm-Bonferroni adjusted p-values (same order as given), for several comparisons at once."""
    m = len(p_values)
    order = sorted(range(m), key=lambda i: p_values[i])
    adjusted, running = [0.0] * m, 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * p_values[i]))
        adjusted[i] = running
    return adjusted


def _outcome(value):
    """A record's truth or prediction: a label (str), or a label set (a sorted tuple) when the record holds a list."""
    return tuple(sorted(str(v) for v in value)) if isinstance(value, list | tuple) else str(value)


def _records(p: dict, name: str) -> dict[tuple[int, int], tuple]:
    """{(repeat, test_index): (fold, truth, prediction, duplicate group)} of one predictions.json (older ones: repeat =
    fold = 0, and each letter its own group)."""
    idx, y_true, y_pred = p["test_index"], p["y_true"], p["y_pred"]
    m = len(idx)
    repeat, fold, group = p.get("repeat") or [0] * m, p.get("fold") or [0] * m, p.get("group") or [f"letter {i}" for i in idx]
    if not len(y_true) == len(y_pred) == len(repeat) == len(fold) == len(group) == m:
        raise ValueError(f"paired comparison: predictions {name} has lists of different lengths (test_index has {m})")
    out = {}
    for r, f, i, t, pr, g in zip(repeat, fold, idx, y_true, y_pred, group):
        if (int(r), int(i)) in out:
            raise ValueError(f"paired comparison: predictions {name} scores letter {i} twice in repeat {r}")
        out[int(r), int(i)] = (int(f), _outcome(t), _outcome(pr), g)
    return out


def fold_rows(p: dict) -> dict[tuple[int, int], frozenset]:
    """{(repeat, fold): its test letters} of one predictions.json: folds of two evaluations with the same key and letters
    are the same fold."""
    return _fold_rows(_records(p, "given"))


def score_on(p: dict, labels, metric: str, folds) -> float:
    """One evaluation's `metric` on the records of `folds` ((repeat, fold) keys) only, over `labels` as the headline (macro:
    every label, one with neither letters nor predictions scoring 0): the figure a comparison ranks by, on the same
    records as its tests."""
    from sklearn.metrics import f1_score

    recs = _records(p, "given")
    keys = sorted(k for k in recs if (k[0], recs[k][0]) in set(folds))
    if not keys:
        raise ValueError("score_on: none of these folds is in the predictions")
    y_true, y_pred = [recs[k][1] for k in keys], [recs[k][2] for k in keys]
    if isinstance(y_true[0], tuple):
        classes = label_list(labels, *({lab for s in col for lab in s} for col in (y_true, y_pred)))
        T, P = indicator(y_true, classes), indicator(y_pred, classes)
        average = metric.removesuffix("_f1")
        return float(f1_score(T, P, average=average, zero_division=1.0 if average == "samples" else 0.0))
    labs = label_list(labels, y_true, y_pred)
    return float(f1_per_class(weighted_confusion(codes(y_true, labs), codes(y_pred, labs), len(labs))).mean())


def _training_size(train_sizes: dict | None, folds: list, rest: float) -> float:
    """The mean training letters of `folds` ((repeat, fold) ids) as `train_sizes` records them; `rest` (the letters not
    tested) when it records none of them."""
    known = [float(train_sizes[f]) for f in folds if train_sizes and train_sizes.get(f)]
    return float(np.mean(known)) if len(known) == len(folds) else rest


def _fold_rows(recs: dict) -> dict[tuple[int, int], frozenset]:
    rows: dict = {}
    for (r, i), (f, *_) in recs.items():
        rows.setdefault((r, f), set()).add(i)
    return {k: frozenset(v) for k, v in rows.items()}


def _by_fold(folds: list) -> list[list[int]]:
    members: dict = {}
    for i, fold in enumerate(folds):
        members.setdefault(fold, []).append(i)
    return [members[f] for f in sorted(members)]


def _one_label(y_true, pred_a, pred_b, labels) -> dict:
    """Macro-F1 of A and B, the difference on a bootstrap resample (weights), per fold, and which letters each got right."""
    labs = label_list(labels, y_true, pred_a, pred_b)
    t, pa, pb, k = codes(y_true, labs), codes(pred_a, labs), codes(pred_b, labs), len(labs)

    def diff(w) -> float:  # each resample averages over the same classes as the point figures
        return f1_per_class(weighted_confusion(t, pa, k, w)).mean() - f1_per_class(weighted_confusion(t, pb, k, w)).mean()

    return {
        "strata": t,
        "a": float(f1_per_class(weighted_confusion(t, pa, k)).mean()),
        "b": float(f1_per_class(weighted_confusion(t, pb, k)).mean()),
        "diff": diff,
        "fold_diffs": lambda folds: np.subtract(fold_scores(y_true, pred_a, folds, labs), fold_scores(y_true, pred_b, folds, labs)),
        "right": (pa == t, pb == t),
    }


def _label_sets(y_true, pred_a, pred_b, labels, metric: str) -> dict:
    """As _one_label for label sets and one of LABEL_SET_METRICS (the point figures over every label, as the headline)."""
    from sklearn.metrics import f1_score

    classes = label_list(labels, *({lab for s in col for lab in s} for col in (y_true, pred_a, pred_b)))
    T, A, B = (indicator(col, classes) for col in (y_true, pred_a, pred_b))
    j, average = LABEL_SET_METRICS.index(metric), metric.removesuffix("_f1")

    def score(rows, P) -> float:
        return float(f1_score(T[rows], P[rows], average=average, zero_division=1.0 if average == "samples" else 0.0))

    every = np.arange(len(T))
    return {
        "strata": label_set_strata(T),
        "a": score(every, A),
        "b": score(every, B),
        "diff": lambda w: multilabel_scores(T, A, w)[j] - multilabel_scores(T, B, w)[j],
        "fold_diffs": lambda folds: np.array([score(rows, A) - score(rows, B) for rows in _by_fold(folds)]),
        "right": ((T == A).all(1), (T == B).all(1)),
    }


def paired_comparison(
    a: dict,
    b: dict,
    labels=None,
    *,
    metric: str = "macro_f1",
    n_boot: int = 2000,
    seed: int = 0,
    level: float = 0.95,
    folds=None,
    train_sizes: dict | None = None,
) -> dict:
    """Is A's score different from B's on the same letters? `a`, `b`: two predictions.json records; `metric`: macro_f1 for
    one label per letter, micro_f1, macro_f1 or samples_f1 for label sets (records whose truth is a list).

    Only folds both scored with identical test letters count (a fold is its (repeat, fold) id and its
    set of test rows; a holdout is repeat 0, fold 0), so a 5x2 and a 5x1 cross-validation are compared
    on repeat 0; records are matched by (repeat, test_index). Returned:

    * metric, score_a, score_b; diff: the pooled score (over `labels`) of A minus B over the common records;
    `folds` ((repeat, fold) keys; None: every common fold) restricts the comparison to those folds, so a family of
    comparisons ranks and tests on the same letters and repeats (engine.evaluation.comparison).

    * diff_ci, p_bootstrap: paired stratified cluster bootstrap over duplicate groups (engine.evaluation.metrics.
      GroupBootstrap: copies of a letter and a letter's records of every repeat move together, every class in every
      resample, the same resample for both), percentile CI, and the p that inverts it (twice the share of resampled
      differences on the far side of 0: the CI at level 1 - p just reaches 0); each resample averages the same labels as
      the point figures; boot_diffs: the resampled differences (for intervals at other levels, `interval`);
    * cv with >= 2 common folds: fold_diffs (the score per fold, A - B), and the Nadeau-Bengio corrected
      t-test on them (p_corrected, t, df, corrected_ci) with n_test = mean fold size and n_train = the mean
      training letters of the common folds as `train_sizes` gives them ({(repeat, fold): training letters}, the
      plans' fold sizes: fewer than n_letters - n_test when the training side was cut to labels_per_class), else
      n_letters - n_test; this is the p to trust under CV, because the bootstrap ignores that the
      classifiers were trained on overlapping sets;
    * holdout: p_mcnemar, McNemar's exact test on the letters exactly one of the two got right (label sets: the whole set);
    * identical: both predicted the same label (set) for every common record.

    Raises ValueError when the two share no letter (no common fold), or for a metric the task has not.
    """
    from scipy.stats import binomtest

    ra, rb = _records(a, "A"), _records(b, "B")
    fa, fb = _fold_rows(ra), _fold_rows(rb)
    common = sorted(k for k in fa if fb.get(k) == fa[k] and (folds is None or k in set(folds)))
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
    sets = isinstance(y_true[0], tuple)
    allowed = LABEL_SET_METRICS if sets else ("macro_f1",)
    if metric not in allowed:
        raise ValueError(f"paired comparison: {metric!r} is not a score of this task; use one of {', '.join(allowed)}")
    s = _label_sets(y_true, pred_a, pred_b, labels, metric) if sets else _one_label(y_true, pred_a, pred_b, labels)
    n_letters = len({i for _, i in keys})
    boot = GroupBootstrap([ra[key][3] for key in keys], s["strata"], len(keys), seed)
    identical = pred_a == pred_b
    observed = 0.0 if identical else s["a"] - s["b"]
    diffs = np.array([s["diff"](boot.weights()) for _ in range(n_boot)])
    alpha = (1 - level) / 2
    far = np.sum(diffs <= 0) if observed > 0 else np.sum(diffs >= 0)  # resamples on the other side of 0 from the observed
    p_boot = 1.0 if observed == 0 else (1 + 2 * far) / (n_boot + 1)
    protocols = {a.get("protocol") or "holdout", b.get("protocol") or "holdout"}
    out = {
        "protocol": protocols.pop() if len(protocols) == 1 else "mixed",
        "metric": metric,
        "n_letters": n_letters,
        "n_records": len(keys),
        "n_folds": len(common),
        "score_a": s["a"],
        "score_b": s["b"],
        "diff": float(observed),
        "diff_ci": [0.0, 0.0] if identical else [float(np.quantile(diffs, alpha)), float(np.quantile(diffs, 1 - alpha))],
        "p_bootstrap": float(min(1.0, p_boot)),
        "n_boot": n_boot,
        "boot_diffs": [0.0] * n_boot if identical else diffs.tolist(),
        "se": None,
        "identical": identical,
        "fold_diffs": None,
        "p_corrected": None,
        "t": None,
        "df": None,
        "corrected_ci": None,
        "n_train": None,
        "p_mcnemar": None,
        "only_a_right": None,
        "only_b_right": None,
    }
    if out["protocol"] == "cv" and len(common) >= 2:
        fold_diffs = s["fold_diffs"](folds)
        n_test = float(np.mean([len(fa[f]) for f in common]))
        n_train = _training_size(train_sizes, common, n_letters - n_test)
        if n_train > 0:
            tt = corrected_ttest(fold_diffs, n_train, n_test, level=level)
            out.update(fold_diffs=fold_diffs.tolist(), p_corrected=tt["p"], t=tt["t"], df=tt["df"], corrected_ci=tt["ci"], se=tt["se"])
            out.update(corrected_mean=tt["mean"], n_train=n_train)
    if out["protocol"] in ("holdout", "fixed"):  # one test split
        a_right, b_right = s["right"]
        only_a, only_b = int(np.sum(a_right & ~b_right)), int(np.sum(~a_right & b_right))
        p_mcnemar = float(binomtest(only_a, only_a + only_b, 0.5).pvalue) if only_a + only_b else 1.0
        out.update(p_mcnemar=p_mcnemar, only_a_right=only_a, only_b_right=only_b)
    return out


def interval(res: dict, level: float) -> list[float]:
    """The interval at `level` of the test behind a comparison's p-value (`res`: paired_comparison's answer): under cv with
    a corrected t-test, its interval over the folds (mean fold difference ± t quantile x corrected se); else the paired
    bootstrap's percentile interval."""
    from scipy.stats import t as student

    if res.get("p_corrected") is not None:
        mean, se = res["corrected_mean"], res["se"]
        if se <= 1e-12:
            return [mean, mean]
        half = float(student.ppf(1 - (1 - level) / 2, res["df"])) * se
        return [mean - half, mean + half]
    d = np.asarray(res["boot_diffs"], dtype=float)
    alpha = (1 - level) / 2
    return [float(np.quantile(d, alpha)), float(np.quantile(d, 1 - alpha))]
