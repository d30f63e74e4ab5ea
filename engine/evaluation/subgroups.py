"""Subgroups: the headline metric for each value of a column of the letters (site, sex, age band, note type), and the
gap between the best and the worst, each with a 95% CI, to expose a classifier that serves some patients worse.

The column (data option `subgroup_column`, engine.data) is never part of a letter: the classifiers never read it; only
the scored predictions are split by it. For each value: `n` (distinct letters scored), `macro_f1` (the mean F1 over the
classes that have a letter of that subgroup among the scored ones: a class absent from it cannot be measured there; for
label sets the labels it carries) and `macro_f1_ci`. `subgroup_gap` is the macro-F1 of the best subgroup minus that of
the worst (chosen on the point figures), and `subgroup_gap_ci` its interval from the same resamples.

The intervals resample duplicate groups (all records of a group of copies, in every repeat, move together), within
each subgroup separately, so every subgroup keeps its size in every resample; a class whose letters a resample misses
is left out of that resample's mean (NaN, never 0). A subgroup of fewer than SMALL_SUBGROUP letters gets a warning: the
95% CI of an F1 there spans about ±0.98/√n (±0.18 at 30 letters), so its figure says little.
"""

from __future__ import annotations

import numpy as np

from engine.evaluation.metrics import cluster_ids, percentile_ci, resample_weights

SMALL_SUBGROUP = 30
CHUNK = 100  # resamples computed at once


def _f1(W: np.ndarray, TP: np.ndarray, FP: np.ndarray, FN: np.ndarray, classes: np.ndarray) -> np.ndarray:
    """Mean F1 over `classes` (bool mask) for each row of weights `W` (resamples x records); NaN where none is defined."""
    tp, fp, fn = W @ TP, W @ FP, W @ FN
    denom = 2 * tp + fp + fn
    with np.errstate(invalid="ignore", divide="ignore"):
        f1 = np.where(denom > 0, 2 * tp / np.where(denom > 0, denom, 1), np.nan)
        f1 = np.where(tp + fn > 0, f1, np.nan)[:, classes]  # a class with no letter in the resample is left out
        return np.array([np.nanmean(row) if np.isfinite(row).any() else np.nan for row in f1])


def subgroup_figures(
    T: np.ndarray, P: np.ndarray, values, letters, clusters, *, column: str, n_boot: int, seed: int, level: float = 0.95
) -> dict:
    """The subgroup figures (module docstring) of records with truth `T` and predictions `P` (records x classes, 0/1; one
    label per letter as one-hot rows), `values` (each record's subgroup), `letters` (each record's letter: a letter
    scored in several repeats counts once in `n`) and `clusters` (each record's duplicate group)."""
    T, P = np.asarray(T, dtype=float), np.asarray(P, dtype=float)
    values = np.asarray([str(v) for v in values], dtype=object)
    TP, FP, FN = T * P, (1 - T) * P, T * (1 - P)
    ids, _ = cluster_ids(list(clusters), len(T))
    names = sorted(set(values.tolist()))
    members = {g: np.flatnonzero(values == g) for g in names}
    present = {g: T[members[g]].sum(0) > 0 for g in names}
    counts = {g: (TP[members[g]], FP[members[g]], FN[members[g]]) for g in names}
    point = {g: float(_f1(np.ones((1, len(members[g]))), *counts[g], present[g])[0]) for g in names}
    rng = np.random.default_rng(seed)
    boots = {g: np.empty(n_boot) for g in names}
    for g in names:  # resample the duplicate groups of each subgroup within it
        local, n_local = cluster_ids(ids[members[g]].tolist(), len(members[g]))
        for start in range(0, n_boot, CHUNK):
            size = min(CHUNK, n_boot - start)
            drawn = np.stack([resample_weights(rng, local, n_local) for _ in range(size)])
            boots[g][start : start + size] = _f1(drawn, *counts[g], present[g])

    letters = np.asarray(letters)
    n_letters = {g: len(np.unique(letters[members[g]])) for g in names}
    rows = [
        {
            "name": g,
            "n": n_letters[g],
            "macro_f1": point[g],
            "macro_f1_ci": percentile_ci(boots[g], level),
            "too_few": n_letters[g] < SMALL_SUBGROUP,
        }
        for g in names
    ]
    out: dict = {"subgroup_column": column, "subgroups": rows, "subgroup_gap": None, "subgroup_gap_ci": None, "subgroup_gap_between": None}
    scored = [g for g in names if np.isfinite(point[g])]
    if len(scored) >= 2:
        best, worst = max(scored, key=lambda g: point[g]), min(scored, key=lambda g: point[g])
        out.update(
            subgroup_gap=point[best] - point[worst],
            subgroup_gap_ci=percentile_ci(boots[best] - boots[worst], level),
            subgroup_gap_between=[best, worst],
        )
    small = [r for r in rows if r["too_few"]]
    out["subgroup_warnings"] = (
        [
            f"{len(small)} subgroup(s) of {column!r} have fewer than {SMALL_SUBGROUP} letters: "
            + ", ".join(f"{r['name']!r} ({r['n']})" for r in small[:8])
            + (" and more" if len(small) > 8 else "")
            + f". The 95% CI of an F1 on n letters spans about ±0.98/√n (±{0.98 / np.sqrt(SMALL_SUBGROUP):.2f} at "
            f"{SMALL_SUBGROUP}), so their figures, and a gap involving them, say little."
        ]
        if small
        else []
    )
    return out
