"""An evaluation under a plan: every method's predictions on its test folds become the same figures.

The harness (engine.methods.harness) fits a method on each fold's training letters and gathers its test letters'
probabilities and answers (`out_of_fold`); `score` turns the out-of-fold predictions into the figures every method reports:

* `macro_f1`: pooled over every scored (repeat, letter), averaged over *all* classes of the dataset;
* `macro_f1_ci`: 95% stratified cluster bootstrap CI resampling the plan's duplicate groups (copies of a letter, and a
  letter's predictions in every repeat, move together; every class in every resample; engine.evaluation.metrics);
* calibration (engine.evaluation.calibration): `brier`, `ece`, `calibration_bins`, per-label Brier and ECE, and for two
  labels `calibration_intercept` and `calibration_slope`, each figure with its `_ci`;
* `fold_macro_f1` (one per fold), their mean and sd; the majority-class baseline on the same folds;
* `task`: single-label; binary (two labels: engine.binary's sensitivity, specificity, PPV, NPV, ROC-AUC, PR-AUC with
  CIs, the positive label and the operating threshold, each fold's chosen on its training letters by the harness's
  decision rule); multi-label (engine.evaluation.metrics.multilabel_metrics: micro-, macro-, samples-F1 with CIs, subset accuracy,
  Hamming loss, per_label; the predictions made with each fold's per-label thresholds);
* `subgroups`, `subgroup_gap` (with CIs) when the letters carry a subgroup column (engine.evaluation.subgroups);
* `protocol`, `n_letters`, `classes`, and the folds' rows (`folds` under cv, `train_rows`/`test_rows` under
  holdout and fixed, the dataset's own split) as 0-based positions of the data rows of the input file, which scripts read.

`write_predictions` stores one record per scored (repeat, letter) in predictions.json, with its duplicate group.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from engine.cache import artifacts
from engine.cache.storage import sha256_json
from engine.data import duplicates
from engine.data.labels import indicator
from engine.errors import DataError
from engine.evaluation import binary, calibration, metrics, subgroups
from engine.options.groups import MOST_PROBABLE
from engine.protocols.plans import Fold, Plan


@dataclass
class OutOfFold:
    """Predictions of the test letters of every fold: one record per (repeat, letter)."""

    test_index: np.ndarray  # the letter (dataset index)
    repeat: np.ndarray
    fold: np.ndarray
    proba: np.ndarray  # records x classes (multi-label: each label's own probability)
    predicted: np.ndarray | None = None  # multi-label: records x labels, 0/1 (each fold's thresholds applied)


def out_of_fold(parts: list[tuple[Fold, np.ndarray, np.ndarray | None]]) -> OutOfFold:
    """The records of every fold: `parts` holds each fold with its test letters' probabilities and, where a threshold
    decided, its 0/1 answers (None: the most probable label answers)."""
    decided = parts[0][2] is not None
    return OutOfFold(
        np.concatenate([f.test for f, _, _ in parts]),
        np.concatenate([np.full(len(f.test), f.repeat) for f, _, _ in parts]),
        np.concatenate([np.full(len(f.test), f.fold) for f, _, _ in parts]),
        np.concatenate([p for _, p, _ in parts]),
        np.concatenate([np.asarray(q, dtype=np.int8) for _, _, q in parts]) if decided else None,
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


def score(dataset, plan: Plan, oof: OutOfFold, *, n_boot: int, seed: int, decision=None, thresholds: list[float] | None = None) -> dict:
    """The figures of an evaluation (see the module docstring)."""
    from sklearn.metrics import f1_score

    if dataset.multi_label:
        m = _score_multilabel(dataset, plan, oof, n_boot=n_boot, seed=seed)
        T = indicator(dataset.labels, dataset.classes)[oof.test_index]
        return _folds_rows(dataset, plan, m | _subgroups(dataset, plan, oof, T, oof.predicted, n_boot=n_boot, seed=seed))
    classes = dataset.classes
    y = np.asarray(dataset.labels, dtype=str)
    y_true = y[oof.test_index]
    y_pred = np.asarray(classes)[(oof.proba if oof.predicted is None else oof.predicted).argmax(1)]
    groups = plan.groups[oof.test_index]  # the bootstrap's clusters: duplicate groups (a letter's repeats move together)
    m = metrics.metrics(y_true, y_pred, labels=classes, clusters=groups, n_boot=n_boot, seed=seed)
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
    m.update(_fold_summary("macro_f1", per_fold))
    m.update({"task": "single-label", **_common(dataset, plan, oof)})
    two = binary.is_two_label(dataset)
    if two:
        m.update(_score_binary(dataset, oof, groups, y_true, y_pred, decision, thresholds, n_boot=n_boot, seed=seed))
    Y = (y_true[:, None] == np.asarray(classes)[None, :]).astype(np.int8)
    kind, positive = ("binary", m["positive_label"]) if two else ("single", None)
    strata = (y_true == positive) if two else y_true
    m.update(
        calibration.calibration(
            oof.proba, Y, classes, kind=kind, positive=positive, clusters=groups, strata=strata, n_boot=n_boot, seed=seed
        )
    )
    m.update(_subgroups(dataset, plan, oof, Y.astype(bool), y_pred[:, None] == np.asarray(classes)[None, :], n_boot=n_boot, seed=seed))
    return _folds_rows(dataset, plan, m)


def _subgroups(dataset, plan: Plan, oof: OutOfFold, T, P, *, n_boot: int, seed: int) -> dict:
    """The subgroup figures (engine.evaluation.subgroups) when the letters carry a subgroup column; {} otherwise."""
    values = getattr(dataset, "subgroups", None)
    if values is None:
        return {}
    column = dataset.options["subgroup_column"]
    recs = oof.test_index
    return subgroups.subgroup_figures(
        T, P, np.asarray(values, dtype=object)[recs], recs, plan.groups[recs], column=column, n_boot=n_boot, seed=seed
    )


def _score_binary(dataset, oof: OutOfFold, groups, y_true, y_pred, decision, thresholds, *, n_boot: int, seed: int) -> dict:
    """A two-label task's figures (engine.binary) and its operating threshold: each fold's, chosen on its training letters
    (`thresholds`, from steps that choose one), else 0.5 on the positive label's probability (the most probable label)."""
    pos = binary.positive_label(dataset.classes, dataset.labels, decision.positive_label if decision else None)
    p = oof.proba[:, dataset.classes.index(pos)]
    out = binary.binary_metrics(y_true == pos, p, y_pred == pos, clusters=groups, n_boot=n_boot, seed=seed)
    tuned = thresholds is not None
    return {
        "task": "binary",
        "positive_label": pos,
        **out,
        "threshold": float(np.mean(thresholds)) if tuned else 0.5,
        "fold_thresholds": [float(t) for t in thresholds] if tuned else None,
        "threshold_rule": decision.threshold_rule if tuned and decision else MOST_PROBABLE,
        "threshold_target": decision.threshold_target if tuned and decision and decision.threshold_rule != "best-f1" else None,
        "curves": binary.curves(y_true == pos, p),
    }


def _common(dataset, plan: Plan, oof: OutOfFold) -> dict:
    return {
        "protocol": plan.name,
        "n_letters": len(dataset),
        "n_scored": int(len(np.unique(oof.test_index))),  # distinct letters behind the figure (cv: all; holdout: the test split)
        "classes": list(dataset.classes),
    }


def _fold_summary(name: str, per_fold: list[float]) -> dict:
    return {
        f"fold_{name}": per_fold,
        f"fold_{name}_mean": float(np.mean(per_fold)),
        f"fold_{name}_sd": float(np.std(per_fold, ddof=1)) if len(per_fold) > 1 else 0.0,
    }


def _score_multilabel(dataset, plan: Plan, oof: OutOfFold, *, n_boot: int, seed: int) -> dict:
    """The multi-label figures (engine.evaluation.metrics.multilabel_metrics), per fold, and the baseline of always predicting each
    training fold's most frequent label set (often: no label)."""
    from collections import Counter

    classes = dataset.classes
    T_all = indicator(dataset.labels, classes)
    T, P = T_all[oof.test_index], oof.predicted
    groups = plan.groups[oof.test_index]
    m = metrics.multilabel_metrics(T, P, classes, clusters=groups, n_boot=n_boot, seed=seed)
    m.update(
        calibration.calibration(
            oof.proba, T, classes, kind="multi-label", clusters=groups, strata=metrics.label_set_strata(T), n_boot=n_boot, seed=seed
        )
    )
    per_fold = metrics.multilabel_fold_scores(T, P, list(zip(oof.repeat.tolist(), oof.fold.tolist(), strict=True)))
    m.update(_fold_summary("micro_f1", per_fold["micro"]))
    m.update(_fold_summary("macro_f1", per_fold["macro"]))
    base = np.zeros_like(P)
    names = []
    for f in plan.folds:
        common = Counter(tuple(dataset.labels[i]) for i in f.train).most_common(1)[0][0]
        names.append(" + ".join(common) or "no label")
        base[(oof.repeat == f.repeat) & (oof.fold == f.fold)] = indicator([common], classes)[0]
    bm = metrics.multilabel_metrics(T, base, classes, n_boot=0)
    m["baseline"] = {
        "label": names[0] if len(set(names)) == 1 else "most frequent label set of each training fold",
        **{k: bm[k] for k in ("micro_f1", "macro_f1", "samples_f1", "subset_accuracy")},
        "accuracy": bm["subset_accuracy"],
    }
    m.update({"task": "multi-label", **_common(dataset, plan, oof)})
    return m


def _folds_rows(dataset, plan: Plan, m: dict) -> dict:
    """The folds' rows as the input file's data rows, which scripts read."""
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
    """Refuse to score a domain-adapted model (an engine.models.catalog.ModelEntry from the `adapted` source) on letters its
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
    if dataset.multi_label:  # label sets: the truth, and what each fold's thresholds predicted
        y_true = [list(dataset.labels[i]) for i in oof.test_index]
        y_pred = [[c for c, on in zip(classes, row, strict=True) if on] for row in oof.predicted]
    else:
        y = np.asarray(dataset.labels, dtype=str)
        y_true, y_pred = y[oof.test_index], np.asarray(classes)[(oof.proba if oof.predicted is None else oof.predicted).argmax(1)]
    artifacts.write_predictions(
        folder,
        oof.test_index,
        y_true,
        y_pred,
        classes,
        score_kind,
        oof.proba,
        repeat=oof.repeat,
        fold=oof.fold,
        protocol=plan.name,
        group=plan.groups[oof.test_index],
    )
