"""Calibration: do the predicted probabilities mean what they say? Brier score, expected calibration error with its bins,
and for two-label tasks the calibration intercept and slope, each with a 95% stratified cluster bootstrap CI.

What is scored, by task (`P`: records x labels of probabilities, `Y`: the same shape, 0/1 truth):

* two labels: the probability of the positive label against the truth. `brier`: mean (p - y)^2 (0 best, 0.25 for a
  constant 0.5); the reliability bins and `ece` over p; `calibration_intercept`: calibration-in-the-large, the a of
  logit P(y) = a + logit(p) (0: predicted risk matches the observed rate on average); `calibration_slope`: the b of
  logit P(y) = a + b logit(p) (1: ideal; below 1: predictions too extreme; above 1: too modest);
* one label among several: `brier` is the multi-class Brier score, the mean over letters of sum_k (p_k - y_k)^2 (0 best,
  2 worst); the bins and `ece` are over the top-label confidence (the highest probability) against whether that label
  was right;
* label sets: `brier` is the mean of the per-label Brier scores; the bins and `ece` pool every (letter, label)
  probability against whether the letter carries the label;
* every task: `brier_per_label` {label: mean (p_k - y_k)^2} and `ece_per_label` {label: ECE of that label's probability}.

ECE: 10 equal-width bins of predicted probability, sum over bins of (share of records in the bin) x |observed - mean
predicted|. `calibration_bins` [{low, high, n, mean_predicted, observed}] lists the non-empty bins (a reliability diagram).
Under repeated cross-validation every (repeat, letter) record counts, and a letter's records move together in the bootstrap.
"""

from __future__ import annotations

import numpy as np

from engine.evaluation.metrics import GroupBootstrap, percentile_ci

N_BINS = 10
_EPS = 1e-6


def _bin_of(p: np.ndarray, n_bins: int = N_BINS) -> np.ndarray:
    return np.minimum((np.asarray(p, dtype=float) * n_bins).astype(np.int64), n_bins - 1).clip(0)


def reliability_bins(p, y, w=None, n_bins: int = N_BINS) -> list[dict]:
    """The non-empty equal-width bins of predicted probability `p`: low, high, n (records, weighted), mean_predicted and
    observed (the share of `y` = 1)."""
    p, y = np.asarray(p, dtype=float), np.asarray(y, dtype=float)
    w = np.ones(len(p)) if w is None else np.asarray(w, dtype=float)
    b = _bin_of(p, n_bins)
    n = np.bincount(b, weights=w, minlength=n_bins)
    sp, sy = np.bincount(b, weights=w * p, minlength=n_bins), np.bincount(b, weights=w * y, minlength=n_bins)
    return [
        {
            "low": i / n_bins,
            "high": (i + 1) / n_bins,
            "n": float(n[i]),
            "mean_predicted": float(sp[i] / n[i]),
            "observed": float(sy[i] / n[i]),
        }
        for i in range(n_bins)
        if n[i] > 0
    ]


def ece(p, y, w=None, n_bins: int = N_BINS) -> float:
    """Expected calibration error: sum over bins of (share of records) x |observed - mean predicted|; NaN without records."""
    p, y = np.asarray(p, dtype=float), np.asarray(y, dtype=float)
    w = np.ones(len(p)) if w is None else np.asarray(w, dtype=float)
    total = w.sum()
    if total <= 0:
        return float("nan")
    b = _bin_of(p, n_bins)
    sp, sy = np.bincount(b, weights=w * p, minlength=n_bins), np.bincount(b, weights=w * y, minlength=n_bins)
    return float(np.abs(sy - sp).sum() / total)


def _logit(p: np.ndarray) -> np.ndarray:
    p = np.clip(np.asarray(p, dtype=float), _EPS, 1 - _EPS)
    return np.log(p / (1 - p))


def logistic_recalibration(p, y, w=None, max_iter: int = 50) -> tuple[float, float]:
    """(calibration intercept, calibration slope) of probabilities `p` against 0/1 `y` (records weighted by `w`): the
    intercept with logit(p) as offset, and the slope of logit P(y) = a + b logit(p), both by Newton's method. NaN where the
    fit has no finite answer (one class only, or the classes perfectly separated)."""
    from scipy.special import expit

    x, y = _logit(p), np.asarray(y, dtype=float)
    w = np.ones(len(x)) if w is None else np.asarray(w, dtype=float)
    if w.sum() <= 0 or (w * y).sum() <= 0 or (w * (1 - y)).sum() <= 0:
        return float("nan"), float("nan")

    def newton(design: np.ndarray, offset: np.ndarray) -> np.ndarray | None:
        beta = np.zeros(design.shape[1])
        for _ in range(max_iter):
            mu = expit(design @ beta + offset)
            grad = design.T @ (w * (y - mu))
            hess = (design * (w * mu * (1 - mu))[:, None]).T @ design
            try:
                step = np.linalg.solve(hess, grad)
            except np.linalg.LinAlgError:
                return None
            beta = beta + step
            if np.max(np.abs(beta)) > 1e3:
                return None
            if np.max(np.abs(step)) < 1e-8:
                return beta
        return None

    ones = np.ones((len(x), 1))
    a = newton(ones, x)
    ab = newton(np.column_stack([ones[:, 0], x]), np.zeros(len(x)))
    return (float(a[0]) if a is not None else float("nan")), (float(ab[1]) if ab is not None else float("nan"))


def _figures(kind: str, P: np.ndarray, Y: np.ndarray, w: np.ndarray, *, slopes: bool) -> dict:
    """The calibration figures of one (re)sample, records weighted by `w`."""
    total = w.sum()
    per_label = (w @ (P - Y) ** 2) / total
    if kind == "binary":
        p, y = P[:, 1], Y[:, 1]  # the positive label is put in column 1 by `calibration`
        out = {"brier": float(per_label[1]), "ece": ece(p, y, w)}
        if slopes:
            out["calibration_intercept"], out["calibration_slope"] = logistic_recalibration(p, y, w)
        return out
    if kind == "single":
        top = P.argmax(1)
        conf, right = P[np.arange(len(P)), top], Y[np.arange(len(P)), top]
        return {"brier": float(per_label.sum()), "ece": ece(conf, right, w)}
    return {"brier": float(per_label.mean()), "ece": ece(P.ravel(), Y.ravel(), np.repeat(w, P.shape[1]))}


def calibration(
    P,
    Y,
    classes: list[str],
    *,
    kind: str,
    positive: str | None = None,
    clusters=None,
    strata=None,
    n_boot: int = 1000,
    seed: int = 0,
    level: float = 0.95,
) -> dict:
    """The calibration figures (see the module docstring) of probabilities `P` against 0/1 truth `Y` (records x classes),
    JSON-ready; `kind`: "binary" (with `positive`, the positive label), "single" or "multi-label"; `clusters` and `strata`:
    the bootstrap's (engine.evaluation.metrics.GroupBootstrap)."""
    P, Y = np.asarray(P, dtype=float), np.asarray(Y, dtype=float)
    if P.shape != Y.shape or P.shape[1] != len(classes):
        raise ValueError(f"calibration: probabilities {P.shape} and truth {Y.shape} must be records x {len(classes)} labels")
    if kind == "binary":
        j = classes.index(positive)
        order = [1 - j, j]
        P, Y = P[:, order], Y[:, order]
    ones = np.ones(len(P))
    out = {k: (None if v != v else v) for k, v in _figures(kind, P, Y, ones, slopes=True).items()}  # no finite fit: null in JSON
    per_label = (ones @ (P - Y) ** 2) / len(P) if len(P) else np.full(P.shape[1], np.nan)
    names = [classes[i] for i in order] if kind == "binary" else list(classes)
    out["brier_per_label"] = {c: float(v) for c, v in zip(names, per_label, strict=True)}
    out["ece_per_label"] = {c: ece(P[:, k], Y[:, k]) for k, c in enumerate(names)}
    if kind == "binary":
        out["calibration_bins"] = reliability_bins(P[:, 1], Y[:, 1])
    elif kind == "single":
        top = P.argmax(1)
        out["calibration_bins"] = reliability_bins(P[np.arange(len(P)), top], Y[np.arange(len(P)), top])
    else:
        out["calibration_bins"] = reliability_bins(P.ravel(), Y.ravel())
    out["calibration_kind"] = {"binary": "probability of the positive label", "single": "top-label confidence"}.get(
        kind, "every (letter, label) probability"
    )
    names_ci = ["brier", "ece"] + (["calibration_intercept", "calibration_slope"] if kind == "binary" else [])
    if not n_boot:
        out.update({f"{n}_ci": None for n in names_ci})
        return out
    boot = GroupBootstrap(clusters, strata, len(P), seed)
    draws = [_figures(kind, P, Y, boot.weights(), slopes=kind == "binary") for _ in range(n_boot)]
    for n in names_ci:
        out[f"{n}_ci"] = percentile_ci([d[n] for d in draws], level)
    return out
