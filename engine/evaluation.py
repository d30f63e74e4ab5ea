"""An evaluation under a plan: every method's predictions on its test folds become the same figures.

A method gives `fit_predict(fold) -> probabilities of fold.test` (fitted on fold.train only);
`cross_predict` runs it over the plan's folds (progress, cancellation), and `score` turns the
out-of-fold predictions into the figures every method reports:

* `macro_f1`: pooled over every scored (repeat, letter), averaged over *all* classes of the dataset;
* `macro_f1_ci`: 95% bootstrap CI resampling letters (a letter's predictions in every repeat move together);
* `fold_macro_f1` (one per fold), their mean and sd; the majority-class baseline on the same folds;
* `protocol`, `n_letters`, `classes`, and the folds' rows (`folds` under cv, `train_rows`/`test_rows` under
  holdout and fixed, the dataset's own split) as 0-based positions of the data rows of the input file, which scripts read.

`write_predictions` stores one record per scored (repeat, letter) in predictions.json.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from engine import artifacts, duplicates, metrics
from engine.context import StepContext, ensure
from engine.errors import DataError
from engine.protocols import Fold, Plan
from engine.storage import sha256_json


@dataclass
class OutOfFold:
    """Predictions of the test letters of every fold: one record per (repeat, letter)."""

    test_index: np.ndarray  # the letter (dataset index)
    repeat: np.ndarray
    fold: np.ndarray
    proba: np.ndarray  # records x classes


def cross_predict(plan: Plan, fit_predict: Callable[[Fold], np.ndarray], n_classes: int, ctx: StepContext | None = None) -> OutOfFold:
    """`fit_predict(fold)` on every fold of the plan (each fits on fold.train only and returns fold.test's probabilities)."""
    ctx = ensure(ctx)
    parts = []
    for i, fold in enumerate(plan.folds):
        ctx.check_stop(f"Cancelled before fold {i + 1} of {len(plan.folds)}.")
        proba = np.asarray(fit_predict(fold), dtype=float)
        if proba.shape != (len(fold.test), n_classes):
            raise RuntimeError(f"fold {i + 1}: expected probabilities of shape {(len(fold.test), n_classes)}, got {proba.shape}")
        parts.append((fold, proba))
    return OutOfFold(
        np.concatenate([f.test for f, _ in parts]),
        np.concatenate([np.full(len(f.test), f.repeat) for f, _ in parts]),
        np.concatenate([np.full(len(f.test), f.fold) for f, _ in parts]),
        np.concatenate([p for _, p in parts]),
    )


def fold_label(plan: Plan, fold: Fold) -> str:
    """'fold 2/5 (repeat 1/2)' for progress lines; '' under holdout."""
    if plan.name != "cv":
        return ""
    rep = f", repeat {fold.repeat + 1}/{plan.n_repeats}" if plan.n_repeats > 1 else ""
    return f"fold {fold.fold + 1}/{plan.n_splits}{rep}"


def aligned(proba: np.ndarray, fitted_classes, classes: list[str]) -> np.ndarray:
    """Probabilities with one column per class of the dataset, in its order (a fitted model may order them otherwise)."""
    out = np.zeros((len(proba), len(classes)))
    pos = {c: i for i, c in enumerate(classes)}
    for j, c in enumerate(fitted_classes):
        out[:, pos[str(c)]] = proba[:, j]
    return out


def input_rows(dataset, index) -> list[int]:
    """0-based positions of letters in the data rows of the input file."""
    rows = getattr(dataset, "rows", None)
    return [int(rows[i]) if rows is not None else int(i) for i in index]


def score(dataset, plan: Plan, oof: OutOfFold, *, n_boot: int, seed: int) -> dict:
    """The figures of an evaluation (see the module docstring)."""
    from sklearn.metrics import f1_score

    classes = dataset.classes
    y = np.asarray(dataset.labels, dtype=str)
    y_true = y[oof.test_index]
    y_pred = np.asarray(classes)[oof.proba.argmax(1)]
    m = metrics.metrics(y_true, y_pred, labels=classes, clusters=oof.test_index, n_boot=n_boot, seed=seed)
    fold_ids = list(zip(oof.repeat.tolist(), oof.fold.tolist(), strict=True))
    per_fold = metrics.fold_scores(y_true, y_pred, fold_ids, classes)
    majority = np.empty(len(y_true), dtype=object)
    for f in plan.folds:
        values, counts = np.unique(y[f.train], return_counts=True)
        majority[(oof.repeat == f.repeat) & (oof.fold == f.fold)] = values[np.argmax(counts)]
    m["baseline"] = {
        "label": str(majority[0]) if plan.name != "cv" else "majority label of each training fold",
        "macro_f1": float(f1_score(y_true, majority.astype(str), labels=classes, average="macro", zero_division=0)),
        "accuracy": float(np.mean(majority.astype(str) == y_true)),
    }
    m.update(
        {
            "protocol": plan.name,
            "n_letters": len(dataset),
            "n_scored": int(len(np.unique(oof.test_index))),  # distinct letters behind the figure (cv: all; holdout: the test split)
            "classes": list(classes),
            "fold_macro_f1": per_fold,
            "fold_macro_f1_mean": float(np.mean(per_fold)),
            "fold_macro_f1_sd": float(np.std(per_fold, ddof=1)) if len(per_fold) > 1 else 0.0,
        }
    )
    if plan.name == "cv":
        m["folds"] = [{"repeat": f.repeat, "fold": f.fold, "test_rows": input_rows(dataset, f.test)} for f in plan.folds]
    else:
        m["train_rows"] = input_rows(dataset, plan.folds[0].train)
        m["test_rows"] = input_rows(dataset, plan.folds[0].test)
    return m


def letter_hash(text: str) -> str:
    """A short hash of a letter's normalised text: what a domain-adapted model records of the letters it read."""
    return sha256_json(duplicates.normalize(text))[:16]


def letter_hashes(texts: list[str]) -> list[str]:
    return sorted({letter_hash(t) for t in texts})


def require_unseen(entry, dataset, plan: Plan) -> None:
    """Refuse to score a domain-adapted model (an engine.models.ModelEntry from the `adapted` source) on letters its
    adaptation read (a leak: the model has seen the test letters). Other models pass."""
    from pathlib import Path

    if entry.source != "adapted":
        return
    model_folder, model_name = entry.ref, entry.name
    if not (Path(model_folder) / artifacts.MANIFEST).exists():
        return
    seen = set(artifacts.read_manifest(model_folder).get("seen_letters") or [])
    if not seen:
        return
    tested = sorted({int(i) for f in plan.folds for i in f.test})
    overlap = [i for i in tested if letter_hash(dataset.texts[i]) in seen]
    if overlap:
        rows = ", ".join(str(int(r) + 1) for r in input_rows(dataset, overlap[:8]))
        hint = (
            "Under cross-validation every letter is a test letter: use --protocol holdout with the seed and test size of the "
            "adaptation (its test letters were never read), or adapt the model on other, unlabelled letters."
            if plan.name == "cv"
            else "Use the seed and test size of the adaptation (its test letters were never read), or adapt on other letters."
        )
        raise DataError(
            f"{model_name} was domain-adapted on {len(overlap)} of the letters this evaluation tests (rows {rows}"
            f"{' and more' if len(overlap) > 8 else ''}); its scores on them would be inflated. {hint}"
        )


def write_predictions(folder, dataset, plan: Plan, oof: OutOfFold, score_kind: str = "probability") -> None:
    """predictions.json: one record per scored (repeat, letter)."""
    classes = dataset.classes
    y = np.asarray(dataset.labels, dtype=str)
    artifacts.write_predictions(
        folder,
        oof.test_index,
        y[oof.test_index],
        np.asarray(classes)[oof.proba.argmax(1)],
        classes,
        score_kind,
        oof.proba,
        repeat=oof.repeat,
        fold=oof.fold,
        protocol=plan.name,
    )
