"""Evaluation protocols: which letters a classifier is fitted on and which it is scored on.

A `Plan` lists the folds of one evaluation; every method of a run that reads the same options gets
the same plan (it is a pure function of the letters, their duplicate groups and the options), so
models and methods are compared on the same letters:

* `cv`: repeated stratified K-fold; every letter lands in exactly one test fold per repeat. Repeat r
  is shuffled by (seed, r) alone, so a 5x1 plan (fine-tuning's default) is the first repeat of a
  5x2 plan (the frozen methods' default);
* `holdout`: one stratified train/test split;
* `fixed`: the dataset's own split (`Dataset.split`: the data option `split_column`, a column holding `train` or
  `test` per row, or `test_ids`, a file of the test rows' ids matched against the `id` column; engine.data.dataset.tables.split_of).
  One fold, as under holdout; duplicate groups straddling it cannot be regrouped without moving letters, so a warning
  gives their count and the split is kept as given. Fine-tuning carves its validation letters from the training rows;
* `auto`: cv under `CV_AUTO_MAX_LETTERS` letters (a hold-out test split of a small dataset holds too few
  letters to compare models), holdout above; never fixed.

Multi-label letters (several labels, or none) are split by iterative stratification (the iterative-stratification
package: every label's share kept in every fold, rarest label first), applied to the duplicate groups.

Duplicate letters (engine.duplicates) form groups that never straddle training and test letters in any
split, fold or validation carve (StratifiedGroupKFold). Every class of the dataset must have a test
letter in every fold, else `plan` refuses with the class, its count and what to change. `carve`
takes fine-tuning's validation letters from a fold's training letters only.

`labels_per_class` (the learning curve's sizes) keeps at most n training letters per label in every fold, and in
`Plan.final_train`, the letters a stored classifier is trained on (cv: every letter; holdout and fixed: the training
split). The draw is nested: each label's training letters are put in one order, seeded by (seed, repeat, fold) and never
by n, and the first n are kept, so the 8 letters of a label are among its 16. The test letters are those of the plan
without it, so every size is scored on the same letters; subsampling the training side only cannot bring a copy of a
test letter into it.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import numpy as np

from engine.cache.storage import sha256_json
from engine.data import duplicates
from engine.data import labels as labelling
from engine.data.labels import indicator
from engine.errors import DataError
from engine.options.groups import CV_AUTO_MAX_LETTERS, ProtocolOptions


@dataclass(frozen=True)
class Fold:
    repeat: int
    fold: int
    train: np.ndarray  # indices into the dataset, sorted
    test: np.ndarray


@dataclass(frozen=True)
class Plan:
    """The folds of one evaluation (holdout: a single fold) and how they were made."""

    name: str  # "cv" | "holdout" | "fixed"
    reason: str  # why this protocol, in a sentence a user reads
    seed: int
    n_splits: int  # cv folds per repeat (holdout: 1)
    n_repeats: int
    test_size: float | None  # holdout only (fixed: the split's own test fraction)
    folds: tuple[Fold, ...]
    groups: np.ndarray  # duplicate group of each letter
    near_threshold: float | None
    hash: str  # covers the letters, the groups, every fold's indices, labels_per_class and the subgroup column (its figures)
    warnings: tuple[str, ...] = ()
    labels_per_class: int | None = None  # at most this many training letters per label (None: all)
    final_train: np.ndarray | None = None  # the letters the stored classifier is trained on (cv: every letter)
    train_per_label: float | None = None  # training letters per label, the mean over folds and labels

    @property
    def groups_hash(self) -> str:
        return sha256_json(self.groups.tolist())

    def manifest(self) -> dict:
        """What a manifest records of the plan (the folds' rows are in the metrics, as scripts read them)."""
        sizes = np.bincount(self.groups)
        return {
            "name": self.name,
            "reason": self.reason,
            "seed": self.seed,
            "n_splits": self.n_splits,
            "n_repeats": self.n_repeats,
            "test_size": self.test_size,
            "hash": self.hash,
            "labels_per_class": self.labels_per_class,
            "train_per_label": self.train_per_label,
            "groups": {
                "hash": self.groups_hash,
                "n_groups": int(len(sizes)),
                "n_duplicate_groups": int((sizes > 1).sum()),
                "largest": int(sizes.max()) if len(sizes) else 0,
                "near_threshold": self.near_threshold,
            },
            "folds": [{"repeat": f.repeat, "fold": f.fold, "n_train": int(len(f.train)), "n_test": int(len(f.test))} for f in self.folds],
            "n_final_train": None if self.final_train is None else int(len(self.final_train)),
            "warnings": list(self.warnings),
        }


def stratify_key(ds) -> list[str]:
    """One label per letter: the label, or (multi-label) the letter's rarest label ("" when it has none). The learning
    curve's draw per label reads it; multi-label folds balance every label (split_key)."""
    if not ds.multi_label:
        return [str(v) for v in ds.labels]
    counts = Counter(lab for labs in ds.labels for lab in labs)
    return [min(labs, key=lambda lab: (counts[lab], lab)) if labs else "" for labs in ds.labels]


def split_key(ds) -> np.ndarray:
    """What the folds balance: each letter's label, or (multi-label) its 0/1 row over every label, which iterative
    stratification (the iterative-stratification package) balances label by label, rarest first; a last column marks
    the letters with no label, so they are spread evenly too."""
    if not ds.multi_label:
        return np.asarray(stratify_key(ds))
    y = indicator(ds.labels, ds.classes)
    return np.column_stack([y, (y.sum(1) == 0).astype(np.int8)])


def choose(requested: str, n_letters: int, n_splits: int, n_repeats: int, test_size: float) -> tuple[str, str]:
    """(protocol, reason) for the `protocol` option."""
    cv = f"{n_splits}-fold cross-validation x {n_repeats} repeat{'s' if n_repeats > 1 else ''}: every letter is scored once per repeat"
    holdout = f"one hold-out test split of {int(np.ceil(test_size * n_letters))} letters ({test_size:g})"
    if requested == "cv":
        return "cv", f"{cv} (chosen in the options)"
    if requested == "holdout":
        return "holdout", f"{holdout} (chosen in the options)"
    if requested == "fixed":
        return "fixed", "the dataset's own train/test split (chosen in the options)"
    if n_letters < CV_AUTO_MAX_LETTERS:
        return "cv", (
            f"{cv}; chosen because the dataset has {n_letters} letters (< {CV_AUTO_MAX_LETTERS}), too few for a hold-out split "
            f"to tell models apart"
        )
    return "holdout", f"{holdout}; chosen because the dataset has {n_letters} letters (>= {CV_AUTO_MAX_LETTERS})"


def groups_of(ds, near_threshold: float | None = None) -> np.ndarray:
    """The duplicate group of each letter: exact copies always, near-copies when a threshold is given."""
    if near_threshold is None:
        return duplicates.exact_groups(ds.texts)
    return duplicates.near_groups(ds.texts, near_threshold)


def prepare(ds, p: ProtocolOptions):
    """The letters a run scores: `ds`; or without the exact copies filed under different labels (label_conflicts: drop); or
    with each set of them merged into one letter that carries all their labels (merge: a multi-label task); and (no_label:
    class) a multi-label letter with no label given the label engine.data.dataset.labels.NO_LABEL."""
    if p.no_label == "class":
        ds = labelling.label_the_unlabelled(ds)
    if p.label_conflicts == "merge":
        return duplicates.merge_conflicts(ds)
    if p.label_conflicts != "drop":
        return ds
    drop = [i for group in duplicates.conflicts(ds.texts, ds.labels) for i in group]
    if not drop:
        return ds
    kept = ds.without(drop)
    if len(set(kept.classes)) < 2:
        raise DataError(
            f"Leaving out the {len(drop)} letters with conflicting labels leaves fewer than two labels; use label_conflicts: group."
        )
    return kept


def _seed(seed: int, *salt: int) -> int:
    return int(np.random.SeedSequence([seed, *salt]).generate_state(1)[0])


SUBSAMPLE_SALT = 20_011  # keeps the draws of labels_per_class apart from the folds' shuffles


def subsample(key: np.ndarray, idx: np.ndarray, n: int | None, seed: int, repeat: int = -1, fold: int = -1) -> np.ndarray:
    """At most `n` of the letters `idx` per label (`key`: each letter's stratify_key; all of a label's when it has fewer;
    None: all), sorted. Nested: each label's letters are put in one order seeded by (seed, repeat, fold) alone and the
    first n are kept, so a smaller n keeps a subset of a larger one's letters. (-1, -1): the stored classifier's draw."""
    idx = np.sort(np.asarray(idx, dtype=int))
    if n is None:
        return idx
    rng = np.random.default_rng(_seed(seed, SUBSAMPLE_SALT, repeat + 1, fold + 1))
    k = np.asarray(key)[idx]
    kept = [rng.permutation(idx[k == label])[:n] for label in sorted(set(k.tolist()))]
    return np.sort(np.concatenate(kept)) if kept else idx


def _kfold(idx: np.ndarray, key: np.ndarray, groups: np.ndarray, n_splits: int, seed: int) -> list[np.ndarray]:
    """The test indices of each of `n_splits` stratified folds of `idx`, keeping groups whole (`key`: split_key)."""
    from sklearn.model_selection import StratifiedGroupKFold, StratifiedKFold

    k, g = key[idx], groups[idx]
    if k.ndim == 2:  # multi-label: iterative stratification of the duplicate groups, a group carrying its letters' labels
        from iterstrat.ml_stratifiers import MultilabelStratifiedKFold

        names, member = np.unique(g, return_inverse=True)
        per_group = np.zeros((len(names), k.shape[1]), dtype=np.int8)
        np.maximum.at(per_group, member, k)
        splitter = MultilabelStratifiedKFold(n_splits=n_splits, shuffle=True, random_state=seed % 2**32)
        return [np.sort(idx[np.isin(member, test)]) for _, test in splitter.split(np.zeros(len(names)), per_group)]
    if len(np.unique(g)) == len(g):  # no duplicates here: the plain stratified K-fold
        splitter = StratifiedKFold(n_splits=n_splits, shuffle=True, random_state=seed)
        parts = splitter.split(idx, k)
    else:
        splitter = StratifiedGroupKFold(n_splits=n_splits, shuffle=True, random_state=seed)
        parts = splitter.split(idx, k, g)
    return [np.sort(idx[test]) for _, test in parts]


def has_duplicates(groups: np.ndarray) -> bool:
    """Whether some duplicate group holds more than one letter."""
    return len(np.unique(groups)) < len(groups)


def inner_splits(ds, rows: np.ndarray, groups: np.ndarray, n_splits: int, seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """Splits of the training letters `rows` of `ds` for what is fitted inside them (grid search, probability calibration,
    thresholds): `splits_of` their labels (label sets: the label columns) and their duplicate groups (`groups`: every
    letter's, the plan's)."""
    rows = np.asarray(rows)
    key = indicator([ds.labels[i] for i in rows], ds.classes) if ds.multi_label else np.asarray(stratify_key(ds))[rows]
    return splits_of(key, np.asarray(groups)[rows], n_splits, seed)


def splits_of(key: np.ndarray, groups: np.ndarray | None, n_splits: int, seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """(fitting, held-out) positions of `n_splits` folds of some letters, by the plan's own splitter: stratified on `key`
    (one label per letter; or a 0/1 matrix, iteratively), duplicate groups (`groups`; None: none) never on both sides.
    Without duplicates these are exactly scikit-learn's StratifiedKFold (label sets: MultilabelStratifiedKFold) splits.
    One label per letter: `n_splits` is lowered to the fewest letters (groups) of a label; [] when that is below 2."""
    key = np.asarray(key)
    g = np.arange(len(key)) if groups is None else np.asarray(groups)
    if key.ndim == 1:
        n_splits = min(n_splits, min(len(np.unique(g[key == lab])) for lab in np.unique(key)))
    if n_splits < 2:
        return []
    pos = np.arange(len(key))
    if len(np.unique(g)) == len(g):
        from sklearn.model_selection import StratifiedKFold

        if key.ndim == 2:
            from iterstrat.ml_stratifiers import MultilabelStratifiedKFold

            splitter = MultilabelStratifiedKFold(n_splits=n_splits, shuffle=True, random_state=seed % 2**32)
        else:
            splitter = StratifiedKFold(n_splits=n_splits, shuffle=True, random_state=seed)
        return list(splitter.split(np.zeros(len(key)), key))
    return [(np.setdiff1d(pos, test), test) for test in _kfold(pos, key, g, n_splits, seed)]


def _holdout(idx: np.ndarray, key: np.ndarray, groups: np.ndarray, test_size: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(train, test) of `idx`: stratified, groups whole. Without duplicates the test part is exactly `test_size`; with them
    it is one fold of round(1 / test_size) grouped folds."""
    from sklearn.model_selection import train_test_split

    k, g = key[idx], groups[idx]
    if len(np.unique(g)) == len(g) and k.ndim == 1:
        counts = np.unique(k, return_counts=True)[1]
        n_test = int(np.ceil(test_size * len(idx)))
        strat = k if counts.min() >= 2 and len(counts) <= n_test and len(counts) <= len(idx) - n_test else None
        train, test = train_test_split(idx, test_size=test_size, random_state=seed, stratify=strat)
        return np.sort(train), np.sort(test)
    test = _kfold(idx, key, groups, max(2, round(1 / test_size)), seed)[0]
    return np.sort(np.setdiff1d(idx, test)), test


def plan(ds, p: ProtocolOptions, method: str | None = None) -> Plan:
    """The folds of the letters `ds` (an engine.data.dataset.Dataset) under the protocol options `p`, for `method` (whose default
    number of CV repeats applies). Refuses, naming the class, when a class would have no test letter in some fold."""
    p = p.resolved(method) if method else p
    n_repeats = p.cv_repeats or 1
    name, reason = choose(p.protocol, len(ds), p.cv_folds, n_repeats, p.test_size)
    key, by_label = split_key(ds), np.asarray(stratify_key(ds))
    groups = groups_of(ds, p.near_duplicates)
    idx = np.arange(len(ds))
    extra = [f"The dataset's own split is ignored under {name}: use protocol fixed to score it."] if getattr(ds, "split", None) else []
    if name == "fixed":
        train, test, extra = _fixed(ds, groups)
        folds, n_splits, n_repeats, test_size = [Fold(0, 0, train, test)], 1, 1, round(len(test) / len(ds), 4)
        reason = f"the dataset's own split: {len(train)} training and {len(test)} test letters (chosen in the options)"
    elif name == "cv":
        _require_cv_counts(ds, p.cv_folds)
        folds = []
        for r in range(n_repeats):
            for f, test in enumerate(_kfold(idx, key, groups, p.cv_folds, _seed(p.seed, r))):
                folds.append(Fold(r, f, np.setdiff1d(idx, test), test))
        n_splits, test_size = p.cv_folds, None
    else:
        train, test = _holdout(idx, key, groups, p.test_size, p.seed)
        folds, n_splits, n_repeats, test_size = [Fold(0, 0, train, test)], 1, 1, p.test_size
    n = p.labels_per_class
    folds = [Fold(f.repeat, f.fold, subsample(by_label, f.train, n, p.seed, f.repeat, f.fold), f.test) for f in folds]
    final = subsample(by_label, idx, n, p.seed) if name == "cv" else folds[0].train
    if n is not None:
        reason += f"; each training split keeps at most {n} letters per label (labels_per_class), the test letters stay the same"
    _require_every_class(ds, folds, name)
    warnings = extra + _group_warnings(groups, len(ds), n_splits if name == "cv" else max(2, round(1 / (test_size or p.test_size))))
    h = sha256_json(
        [ds.data_hash, name, p.seed, p.near_duplicates, sha256_json(groups.tolist()), [[f.repeat, f.fold, f.test.tolist()] for f in folds]]
        + ([{"labels_per_class": n}] if n is not None else [])  # (without it: the hash of earlier versions, so their keys hold)
        + ([{"subgroups": sha256_json(sub)}] if (sub := getattr(ds, "subgroups", None)) else [])  # its figures; as labels_per_class
    )
    per_label = round(float(np.mean([len(f.train) for f in folds])) / max(1, len(set(by_label.tolist()))), 2)
    return Plan(
        name,
        reason,
        p.seed,
        n_splits,
        n_repeats,
        test_size,
        tuple(folds),
        groups,
        p.near_duplicates,
        h,
        tuple(warnings),
        n,
        final,
        per_label,
    )


def _fixed(ds, groups: np.ndarray) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """(train, test, warnings) of the dataset's own split; duplicate groups straddling it are counted, never moved."""
    if getattr(ds, "split", None) is None:
        raise DataError(
            "The fixed protocol scores the dataset's own train/test split, and none was given: name the column that marks each "
            "row train or test (data option split_column, --split-column), or a file of the test rows' ids (test_ids, --test-ids)."
        )
    split = np.asarray(ds.split)
    train, test = np.flatnonzero(split == "train"), np.flatnonzero(split == "test")
    if not len(train) or not len(test):
        raise DataError(f"The dataset's own split has {len(train)} training and {len(test)} test letters; it needs both.")
    straddle = np.intersect1d(groups[train], groups[test])
    if not len(straddle):
        return train, test, []
    warning = (
        f"{len(straddle)} group(s) of duplicate letters ({int(np.isin(groups, straddle).sum())} letters) straddle the dataset's "
        "own split: copies of test letters are among the training letters, which can inflate the scores. A fixed split is kept "
        "as given (no letter is moved); delete the training copies from the file to remove the overlap."
    )
    return train, test, [warning]


def carve(ds, train: np.ndarray, groups: np.ndarray, val_size: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(fitting, validation) indices from the training letters `train` alone: stratified where every label allows it,
    duplicate groups whole. Fine-tuning picks its epoch on the validation letters."""
    key = split_key(ds)
    fit, val = _holdout(np.asarray(train), key, groups, val_size, _seed(seed, 10_007))
    if len(val) == 0 or len(fit) == 0:
        raise DataError(f"{len(train)} training letters are too few to carve a validation set of {val_size:g}; add letters.")
    return fit, val


def _class_counts(ds) -> Counter:
    return Counter(lab for labs in ds.labels for lab in (labs if ds.multi_label else [labs]))


def _require_cv_counts(ds, n_splits: int) -> None:
    short = sorted((c, lab) for lab, c in _class_counts(ds).items() if c < n_splits)
    if short:
        listed = ", ".join(f"{lab!r} ({c} letter{'s' if c != 1 else ''})" for c, lab in short[:6])
        raise DataError(
            f"{len(short)} class(es) have fewer letters than the {n_splits} cross-validation folds, so some test fold would have "
            f"none of them: {listed}{' and more' if len(short) > 6 else ''}. Use fewer folds (cv_folds / --cv-folds, at least "
            f"2), add letters, or merge these classes into others."
        )


def _require_every_class(ds, folds: list[Fold], name: str) -> None:
    """Every class in every test fold (and in every training part), so macro-F1 averages over all of them."""
    counts = _class_counts(ds)
    labels = [labs if ds.multi_label else (labs,) for labs in ds.labels]
    for f in folds:
        for part, rows in (("test", f.test), ("training", f.train)):
            present = {lab for i in rows for lab in labels[i]}
            missing = sorted(set(counts) - present)
            if missing:
                where = {"cv": f"fold {f.fold + 1} of repeat {f.repeat + 1}", "fixed": "the dataset's own split"}.get(
                    name, "the hold-out split"
                )
                lab = missing[0]
                fix = {
                    "cv": "use fewer folds (--cv-folds)",
                    "fixed": f"move letters of {missing[0]!r} to the {part} rows of the split",
                }.get(name, "use a larger test fraction (--test-size) or --protocol cv")
                raise DataError(
                    f"Class {lab!r} ({counts[lab]} letters) has no {part} letter in {where}"
                    f"{f' (nor do {len(missing) - 1} other classes)' if len(missing) > 1 else ''}; its copies or its few letters "
                    f"all fell on one side. Every class must be scored: {fix}, add letters of {lab!r}, or merge it into another class."
                )


def _group_warnings(groups: np.ndarray, n: int, n_splits: int) -> list[str]:
    sizes = np.bincount(groups)
    if not len(sizes) or sizes.max() <= n / (2 * n_splits):
        return []
    big = int(np.argmax(sizes))
    first = int(np.flatnonzero(groups == big)[0])
    return [
        f"The largest duplicate group holds {int(sizes.max())} letters (the first is row {first + 1}), more than n/(2K) = "
        f"{n / (2 * n_splits):.0f}: kept whole, it unbalances the folds. Check whether these letters are copies of one template."
    ]


SMALL_DATASET = 200  # below this many letters a warning says how wide the uncertainty will be
SMALL_CLASS = 10


def uncertainty_warnings(ds) -> list[str]:
    """Plain warnings for data too small for a precise verdict (shown before a run starts)."""
    out = []
    n = len(ds)
    if n < SMALL_DATASET:
        half = 0.98 / np.sqrt(n)  # half-width of a 95% CI of a proportion near 0.5: the order of magnitude for macro-F1
        out.append(
            f"{n} letters is a small dataset: expect the 95% CI of macro-F1 to span about ±{half:.2f}, so only large differences "
            "between models will be detectable. Cross-validation (protocol cv) scores every letter and narrows it most."
        )
    small = sorted((c, lab) for lab, c in _class_counts(ds).items() if c < SMALL_CLASS)
    if small:
        listed = ", ".join(f"{lab!r} ({c})" for c, lab in small[:6])
        out.append(
            f"{len(small)} class(es) have fewer than {SMALL_CLASS} letters: {listed}{' and more' if len(small) > 6 else ''}. "
            "Their F1 rests on a handful of predictions and moves macro-F1 a lot; read their per-class rows with care."
        )
    return out


def preview(ds, p: ProtocolOptions, method: str = "svc") -> dict:
    """What a run with these options would do with these letters: the protocol and why, each class's letters and its
    test letters per fold, and warnings. Raises DataError (naming the class) when a class cannot be scored in every fold."""
    pl = plan(ds, p, method)
    labels = [labs if ds.multi_label else (labs,) for labs in ds.labels]
    rows = []
    for lab, count in sorted(_class_counts(ds).items(), key=lambda kv: (-kv[1], kv[0])):
        per_fold = [sum(lab in labels[i] for i in f.test) for f in pl.folds]
        lo, hi = min(per_fold), max(per_fold)
        rows.append(
            {
                "label": lab,
                "letters": count,
                "test letters per fold" if pl.name == "cv" else "test letters": f"{lo}" if lo == hi else f"{lo}-{hi}",
            }
        )
    return {
        "protocol": pl.name,
        "reason": pl.reason,
        "classes": rows,
        "groups": pl.manifest()["groups"],
        "warnings": [*pl.warnings, *uncertainty_warnings(ds)],
    }
