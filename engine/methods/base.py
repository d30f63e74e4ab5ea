"""The method contract: what a method declares, and the one thing it implements, fitting on a fold's training letters.

A method is a subclass of `Method` in a module named after it (engine/methods/svc.py holds `svc`). It declares its name,
title, stage, the options it reads and the task kinds it takes, and implements:

* `key(job)`: the cache key of its evaluation (the harness adds what the harness itself decides: see harness.cache_key);
* `prepare(job)`: what every fold shares, after a cache miss (embedding every letter once, loading a language model);
* `fit(job, train, tag, label) -> Fitted`: a classifier fitted on the letters `train` only (a fine-tuning method carves
  its validation letters from them with `job.carve(train)`);
* `save(job, final, folder)`: the stored classifier's files, and `record(job, final, fits)`: what its manifest adds.

A `Fitted` answers `predict_proba(rows)` (probabilities of the letters `rows`, one column per class in the dataset's
order; label sets: each label's own probability) and `decision_letters()`: probabilities of training letters the
classifier did not learn from (out-of-fold for methods cheap to refit, the validation carve for those that fine-tune),
from which the harness chooses every decision threshold. Everything else (plan, leakage guard, cache lookup, fold loop,
decision rule, scoring, refit, manifest, sealing, progress and cancellation) is the harness's (engine.methods.harness),
written once. Like scikit-learn's estimators (fit / predict_proba) beside `cross_val_predict`, the method never loops
over folds nor scores itself.

A method that produces a model rather than a classifier (`produces = "model"`: domain-adapt) has no folds nor decision:
it implements `key`, `folder` (where its model is stored) and `build(job) -> Built` (the training and its figures), and
the harness's `produce` plans, guards, looks up, frames the manifest and seals around it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any, ClassVar, Protocol

import numpy as np

from engine.cache.context import StepContext
from engine.cache.storage import evaluations_dir
from engine.data.dataset import Dataset
from engine.data.labels import indicator
from engine.evaluation import binary
from engine.models.devices import Placement
from engine.options.groups import MOST_PROBABLE, Options
from engine.protocols import plans
from engine.protocols.plans import Plan


def fold_tag(fold) -> str:
    """A fold's tag, `r<repeat>f<fold>`: what fits, staging folders and the manifest's decisions are named by (the refit on
    every letter: `all`)."""
    return f"r{fold.repeat}f{fold.fold}"


@dataclass
class Job:
    """One step of one method: the letters, the model, the options, the plan, and what the method keeps between folds."""

    method: Method
    dataset: Dataset
    model: str
    opts: Options
    plan: Plan
    ctx: StepContext
    placement: Placement
    t_start: float
    identity: dict | None = None  # the model's identity (method.setup)
    state: dict[str, Any] = field(default_factory=dict)  # the method's own, shared by its folds

    @property
    def classes(self) -> list[str]:
        return self.dataset.classes

    @property
    def multi(self) -> bool:
        return self.dataset.multi_label

    @cached_property
    def two_labels(self) -> bool:
        return binary.is_two_label(self.dataset)

    @cached_property
    def positive(self) -> str | None:
        """A two-label task's positive label (the option's, or the rarer one); None otherwise."""
        if not self.two_labels:
            return None
        return binary.positive_label(self.classes, self.dataset.labels, self.opts.decision.positive_label)

    @cached_property
    def y(self) -> np.ndarray:
        """Each letter's label (strings), or for label sets the 0/1 matrix letters x labels."""
        if self.multi:
            return indicator(self.dataset.labels, self.classes)
        return np.asarray(self.dataset.labels, dtype=str)

    @property
    def needs_decision(self) -> bool:
        """Whether the decision needs probabilities of training letters (a threshold is chosen on them)."""
        return self.multi or (self.two_labels and self.opts.decision.threshold_rule != MOST_PROBABLE)

    def carve(self, train: np.ndarray, seed: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(fitting, validation) letters carved from the training letters `train`: duplicate groups whole."""
        ft = self.opts.finetune
        return plans.carve(self.dataset, train, self.plan.groups, ft.val_size, self.opts.protocol.seed if seed is None else seed)

    def inner_splits(self, rows: np.ndarray, n_splits: int, seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
        """Splits of the training letters `rows` (positions into `rows`), stratified, duplicate groups whole."""
        return plans.inner_splits(self.dataset, rows, self.plan.groups, n_splits, seed)

    def fold_numbers(self, tag: str) -> tuple[int, int]:
        """(repeat, fold) of the plan's fold tagged `tag` (what seeds a fold's draws); (-1, -1) for the refit (`all`)."""
        for f in self.plan.folds:
            if fold_tag(f) == tag:
                return f.repeat, f.fold
        return -1, -1

    def fold_context(self, label: str) -> StepContext:
        """The step's context for one training among several: progress lines and curve names carry `label`."""
        return self.ctx.labelled(label)


class Fitted(Protocol):
    """A classifier fitted on one fold's training letters (or, for the stored classifier, on the plan's final letters)."""

    def predict_proba(self, rows: np.ndarray) -> np.ndarray:
        """Probabilities of the dataset's letters `rows`: one row per letter, one column per class (dataset order)."""
        ...

    def decision_letters(self) -> tuple[np.ndarray, np.ndarray] | None:
        """(rows, probabilities) of training letters this classifier did not learn from; None when there are none
        (a label with a single letter), and the decision then falls back to the most probable label (0.5)."""
        ...


MULTI_LABEL_RULE = "best F1 per label"


@dataclass
class Decision:
    """How probabilities become answers: the rule, and the threshold(s) chosen on training letters. The harness chooses it
    for each fold and for the stored classifier, whose manifest records it (`decision`); a stored classifier answers by it.
    """

    rule: str
    threshold: float | None = None  # two labels: P(positive) at or above it answers the positive label
    positive: str | None = None
    thresholds: np.ndarray | None = None  # label sets: one per label, in `classes` order

    def predict(self, proba: np.ndarray, classes: list[str]) -> np.ndarray | None:
        """0/1 answers (letters x classes), or None where the answer is the most probable label (the argmax of proba)."""
        if self.thresholds is not None:
            return (proba >= self.thresholds).astype(np.int8)
        if self.threshold is not None:
            j = classes.index(self.positive)
            out = np.zeros((len(proba), 2), dtype=np.int8)
            out[:, j] = proba[:, j] >= self.threshold
            out[:, 1 - j] = 1 - out[:, j]
            return out
        return None

    def answers(self, proba: np.ndarray, classes: list[str]) -> list:
        """Each letter's answer: the tuple of labels at or above their thresholds (label sets), else one label."""
        if self.thresholds is not None:
            return [tuple(c for c, p, t in zip(classes, row, self.thresholds, strict=True) if p >= t) for row in proba]
        if self.threshold is not None:
            j = classes.index(self.positive)
            return [classes[j] if row[j] >= self.threshold else classes[1 - j] for row in proba]
        return [classes[i] for i in np.asarray(proba).argmax(1)]

    def manifest(self, classes: list[str]) -> dict:
        out: dict[str, Any] = {"rule": self.rule}
        if self.threshold is not None:
            out.update(threshold=float(self.threshold), positive_label=self.positive)
        if self.thresholds is not None:
            out["thresholds"] = {c: float(t) for c, t in zip(classes, self.thresholds, strict=True)}
        return out

    @classmethod
    def from_manifest(cls, record: dict, classes: list[str]) -> Decision:
        """The decision a manifest records, its thresholds in `classes` order (0.5 for a label without one)."""
        thresholds = record.get("thresholds")
        return cls(
            record.get("rule", MOST_PROBABLE),
            threshold=record.get("threshold"),
            positive=record.get("positive_label"),
            thresholds=None if thresholds is None else np.array([float(thresholds.get(c, 0.5)) for c in classes]),
        )


@dataclass
class Built:
    """What a method that produces a model built (Method.build): its figures, what its manifest adds to the harness's part,
    and `write(folder)`, which writes the model's files into the artifact's temporary folder."""

    metrics: dict[str, Any]
    record: dict[str, Any]
    write: Callable[[Path], None]


class StoredClassifier:
    """What every stored classifier shares (engine.methods.classifiers loads them): `classes_`, `metadata`,
    `predict_proba(texts)`, and answers by its `decision` (`predict`, `decide`); `thresholds` (label sets), `threshold`
    and `positive_label` (two labels with an operating threshold) are the decision's, for the pages that show them."""

    classes_: list[str]
    metadata: dict
    max_length: int
    tokenizer: Any
    decision: Decision = Decision(MOST_PROBABLE)

    @property
    def thresholds(self) -> np.ndarray | None:
        return self.decision.thresholds

    @property
    def threshold(self) -> float | None:
        return self.decision.threshold

    @property
    def positive_label(self) -> str | None:
        return self.decision.positive

    def predict(self, texts: list[str]) -> list:
        return self.decide(self.predict_proba(texts))

    def decide(self, proba: np.ndarray) -> list:
        """What the classifier answers for these probabilities (one row per letter)."""
        return self.decision.answers(proba, self.classes_)

    def truncated(self, texts: list[str]) -> list[bool]:  # pragma: no cover - overridden
        raise NotImplementedError

    def predict_proba(self, texts: list[str]) -> np.ndarray:  # pragma: no cover - overridden
        raise NotImplementedError


class Method:
    """A method (see the module docstring). Class attributes declare it; the registry lists one instance of each."""

    name: ClassVar[str]
    title: ClassVar[str]
    stage: ClassVar[str]  # frozen (the pretrained model), tuned, or reference
    reads: ClassVar[tuple[str, ...]]  # the options it uses: the form shows them, tests check each key option changes its key
    produces: ClassVar[str] = "classifier"  # or "model" (domain-adapt)
    artifact: ClassVar[str] = "evaluation"  # the kind its manifests record ("domain-adaptation": a model for the catalog)
    label_sets: ClassVar[bool] = False  # it scores multi-label data (several labels per letter, or none)
    # the methods whose artifacts it reuses (logreg: svc's embeddings; lora-svc: lora's adapters): an executor that runs
    # steps in parallel starts it after those steps of the same model, seed and training size (runs.experiment.dependencies)
    after: ClassVar[tuple[str, ...]] = ()
    predictor: ClassVar[str] = ""  # how engine.methods.classifiers loads its stored classifier
    # It splits its training letters itself (grid search, calibration): its evaluations of letters with duplicate groups
    # were keyed without the grouped inner splits before ClinBench 0.3, so the harness keys those anew.
    inner_splits: ClassVar[bool] = False
    # Its keys held the decision options of two-label tasks before ClinBench 0.3 (it chose a threshold then already).
    keyed_decision: ClassVar[bool] = False
    # It can use a model on a server (openai-compat:MODEL@URL): it needs only label log-likelihoods, no weights here.
    remote_models: ClassVar[bool] = False

    # -- what a method implements -------------------------------------------------------------------------------------

    def options(self, opts: Options) -> Options:
        """The options it runs with (zero-shot reads no training letter: it drops labels_per_class)."""
        return opts

    def plan(self, dataset: Dataset, opts: Options) -> Plan:
        """Its folds (domain-adapt: one hold-out split unless the data's own split is asked for)."""
        return plans.plan(dataset, opts.protocol, self.name)

    def setup(self, job: Job) -> None:
        """Before the cache lookup: refuse what it cannot do, and set `job.identity` (the model's identity: its name and
        file hashes, what the key and the manifest record)."""

    def key(self, job: Job) -> str:
        raise NotImplementedError

    def folder(self, job: Job, key: str) -> Path:
        """Where its artifact under `key` is stored (an evaluation's: cache/evaluations/<key>)."""
        return evaluations_dir() / key

    def prepare(self, job: Job) -> None:
        """After a cache miss, before the first fold: what every fold shares (job.state holds it)."""

    def fit(self, job: Job, train: np.ndarray, tag: str, label: str) -> Fitted:
        raise NotImplementedError

    def build(self, job: Job) -> Built:
        """A method that produces a model: train it and measure it (its figures, manifest part and files)."""
        raise NotImplementedError

    def fold_done(self, job: Job, fitted: Fitted, tag: str) -> None:
        """After a fold is scored and decided: free what the fold's classifier holds (a tuned model), or stage it."""

    def save(self, job: Job, final: Fitted, folder: Path) -> None:
        """Write the stored classifier's files into the artifact's temporary folder."""

    def letters_read(self, job: Job, final: Fitted, train: np.ndarray) -> np.ndarray:
        """Which of the stored classifier's training letters (`train`) it read, text or label: what is recorded for external
        validation (engine.evaluation.overlap). Every one of them unless the method knows it read fewer."""
        return train

    def record(self, job: Job, final: Fitted, fits: list[Fitted]) -> dict[str, Any]:
        """What the manifest adds to the harness's part (predictor files, training curves, timings)."""
        return {}

    def finish(self, job: Job, fits: list[Fitted]) -> None:
        """After the artifact is sealed: remove staging folders and checkpoints."""

    def result_name(self, job: Job) -> str:
        """The model name a result carries (the pseudo-model `tfidf` for the reference)."""
        return job.identity["name"] if job.identity else job.model
