"""Run options: one typed dataclass per concern, the single home of every option.

Each field carries its type (the annotation), its default, its allowed range or choices, a one-line
help text, and whether it enters cache keys (field metadata, read through `fields()`). Derived from
these dataclasses, with no list of options anywhere else:

* the `options:` mapping of a spec file: `Options.parse` rejects unknown keys and values of the
  wrong type or out of range, naming the field;
* the CLI flags (engine.optionflags), grouped by concern, help and defaults included;
* the Runs form (`fields()` gives each widget's kind, bounds, choices and help; ui/ draws them);
* the manifest (`Options.to_dict`, flat as in spec files) and the option part of cache keys
  (`key_dict`: only the fields marked as entering the key).

Adding an option is one field here plus the code that reads it. Fine-tuning options whose default
depends on the method (epochs, learning rate, CV repeats) carry that table in their metadata
(`per_method`); `resolved(method)` fills it in.
"""

from __future__ import annotations

import dataclasses
import difflib
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

from engine.errors import SpecError
from engine.options.fieldspec import FieldSpec, PerMethod, coerce, field_specs, option

POOLINGS = ("mean", "last", "cls")
DEFAULT_MAX_LENGTH = 512


PROTOCOLS = ("auto", "cv", "holdout", "fixed")
CV_AUTO_MAX_LETTERS = 500  # `auto` cross-validates datasets smaller than this; a hold-out test split is large enough above


@dataclass(frozen=True)
class ProtocolOptions(PerMethod):
    """How letters are split and scored: cv scores every letter once per repeat (best for small datasets), holdout one
    test split; duplicate letters always stay on one side."""

    TITLE: ClassVar[str] = "Split and evaluation"
    protocol: str = option(
        "auto",
        f"cv: repeated stratified K-fold, every letter scored once per repeat; holdout: one test split; "
        f"fixed: the dataset's own split (data option split_column or test_ids); "
        f"auto: cv under {CV_AUTO_MAX_LETTERS} letters, else holdout (never fixed)",
        choices=PROTOCOLS,
    )
    seed: int = option(0, "seed of the split, SMOTE, the search and training", min=0)
    test_size: float = option(0.2, "holdout: fraction of letters held out for the test", min=0.01, max=0.9)
    cv_folds: int = option(5, "cv: folds per repeat (every class needs a letter in each test fold)", min=2, max=20)
    cv_repeats: int | None = option(
        None,
        "cv: repeats, each with its own shuffle of the folds",
        min=1,
        max=20,
        per_method={
            "tfidf": 2,
            "svc": 2,
            "logreg": 2,
            "linear-probe": 1,
            "lora": 1,
            "lora-svc": 1,
            "adapt-svc": 1,
            "setfit": 1,
            "zero-shot": 1,
            "few-shot": 1,
            "instruct-lora": 1,
        },
    )
    near_duplicates: float | None = option(
        None,
        "also keep near-duplicate letters (MinHash Jaccard of 5-word shingles at least this) in one group; "
        "none: exact duplicates only (they are always grouped)",
        min=0.5,
        max=1.0,
    )
    label_conflicts: str = option(
        "group",
        "exact copies filed under different labels: group keeps each set of copies on one side of every split; drop leaves "
        "them out before scoring; merge makes each set one letter carrying all their labels (the task becomes multi-label)",
        choices=("group", "drop", "merge"),
        key=False,  # it changes the letters, and so the data hash every key holds
    )
    no_label: str = option(
        "outcome",
        "multi-label letters with no label: outcome keeps them as a valid answer (every label absent); class gives them the "
        "label 'no label' of their own, scored like any other",
        choices=("outcome", "class"),
        key=False,  # it changes the labels, and so the data hash every key holds
    )
    n_boot: int = option(1000, "bootstrap resamples for the 95% CI of macro-F1 (100 or more: fewer give no usable CI)", min=100)
    n_seeds: int = option(
        1, "run every step with seeds seed, seed+1, ... and report the spread of macro-F1 across them", min=1, max=20, key=False
    )
    labels_per_class: int | None = option(
        None,
        "train on this many letters per label, drawn (seeded, nested: 8 of them are among 16) from each training split; "
        "the test letters stay the same (none: all)",
        min=1,
    )
    learning_curve: list[int] | None = option(
        None,
        "also run every step at these labels_per_class (e.g. 8,16,32,64) besides all letters, on the same test folds: "
        "Compare plots macro-F1 against training size",
        key=False,
    )


@dataclass(frozen=True)
class EmbeddingOptions:
    """How a model turns a letter into tokens and one vector."""

    TITLE: ClassVar[str] = "Embeddings"
    pooling: str = option("mean", "how token vectors become one letter vector", choices=POOLINGS)
    max_length: int = option(DEFAULT_MAX_LENGTH, "tokens read per letter (per window); longer letters are cut", min=8)
    windows: int = option(
        1,
        "letter vectors (svc, logreg, linear-probe, lora-svc, adapt-svc, setfit): a letter longer than max_length is read in up to this "
        "many overlapping windows of max_length tokens (each shares a quarter with the next), their vectors averaged by the "
        "tokens each read; 1: cut at max_length",
        min=1,
        max=32,
    )
    batch_tokens: int | None = option(
        None, "tokens per forward pass (none: 4096 on CPU, 32768 on GPU); changes speed and memory, not results", min=16, key=False
    )


@dataclass(frozen=True)
class ClassifierOptions:
    """The classifier fitted on embedding vectors (svc, logreg, lora-svc)."""

    TITLE: ClassVar[str] = "Classifier on embeddings"
    smote: bool = option(True, "oversample minority labels with SMOTE, inside each fitting split")
    class_weight: str | None = option(None, "weight classes inversely to their frequency", choices=(None, "balanced"))
    grid: bool = option(True, "choose C (and the SVC kernel) by cross-validation inside the training split")
    inner_folds: int = option(3, "folds of the cross-validation inside the training split (search, calibration)", min=2, max=20)
    k_neighbors: int = option(5, "SMOTE neighbours (lowered to fit the smallest label)", min=1, max=50)
    oversample_limit: float = option(
        2.0,
        "smote: the most it may grow the training letters (labels x the largest label's letters / letters, counted on "
        "each fitting's training letters): above it logreg weights the labels (balanced) instead, and svc raises the "
        "smaller labels only to a common count below the largest's (class weights scored lower for svc); more "
        "synthetic letters than real ones make a fit that many times slower. 1: never SMOTE on unequal labels",
        min=1.0,
        max=1000.0,
        step=0.5,
    )


CHAT_TEMPLATES = ("auto", "on", "off")
MOST_PROBABLE = "most-probable"
THRESHOLD_RULES = ("best-f1", "sensitivity", "specificity", MOST_PROBABLE)


@dataclass(frozen=True)
class DecisionOptions:
    """Binary tasks (two labels): which label is positive and where the operating threshold on its probability lies. Every
    method chooses it the same way, on probabilities of its training letters that it did not learn from (out-of-fold for
    the methods cheap to refit, the validation carve for those that fine-tune), never on the test letters."""

    TITLE: ClassVar[str] = "Decision (binary tasks)"
    positive_label: str | None = option(None, "the label counted as positive (sensitivity, PPV, ROC); none: the rarer label")
    threshold_rule: str = option(
        "best-f1",
        "how the threshold is chosen: best-f1 (the positive label's F1), sensitivity or specificity (the threshold that "
        "reaches threshold_target on the training letters, the other as high as it then can be); most-probable: no threshold, "
        "every method answers the more probable label",
        choices=THRESHOLD_RULES,
    )
    threshold_target: float = option(0.9, "the sensitivity or specificity threshold_rule aims at", min=0.5, max=0.999)


@dataclass(frozen=True)
class FineTuneOptions(PerMethod):
    """Training the model itself (linear-probe, lora, lora-svc, domain-adapt, adapt-svc)."""

    TITLE: ClassVar[str] = "Fine-tuning"
    epochs: int | None = option(
        None,
        "most epochs; the best epoch on the validation split is kept (early stopping)",
        min=1,
        per_method={"linear-probe": 8, "lora": 4, "lora-svc": 4, "domain-adapt": 2, "adapt-svc": 2, "instruct-lora": 2},
    )
    learning_rate: float | None = option(
        None,
        "peak learning rate (under LoRA the new head learns at 10x)",
        min=1e-8,
        max=1.0,
        per_method={
            "linear-probe": 1e-2,
            "lora": 5e-4,
            "lora-svc": 5e-4,
            "domain-adapt": 3e-4,
            "adapt-svc": 3e-4,
            "setfit": 2e-5,
            "instruct-lora": 3e-4,
        },
        step=1e-4,
    )
    warmup_ratio: float = option(0.1, "fraction of steps with a rising learning rate", min=0.0, max=0.9)
    batch_size: int = option(8, "letters per batch", min=1)
    grad_accum: int = option(1, "batches per optimiser step", min=1)
    weight_decay: float = option(0.0, "AdamW weight decay", min=0.0, max=1.0)
    lora_r: int = option(8, "LoRA rank", min=1)
    lora_alpha: int = option(16, "LoRA alpha (scale = alpha / r)", min=1)
    lora_dropout: float = option(0.1, "dropout on the LoRA input", min=0.0, max=0.9)
    target_modules: list[str] | None = option(None, "LoRA target modules (none: by architecture, e.g. query,value)")
    class_weighted_loss: bool = option(True, "weight the cross-entropy by inverse label frequency")
    patience: int = option(2, "epochs without a better validation score before stopping", min=1)
    val_size: float = option(0.15, "fraction of the training split used for validation", min=0.05, max=0.5)
    gradient_checkpointing: bool = option(
        False,
        "recompute each block's activations in the backward pass instead of keeping them: far less memory for large models "
        "and long letters, about a third more time, the same weights",
        key=False,  # (tests/test_architectures.py: the same training, to the bit, with it on or off)
    )


@dataclass(frozen=True)
class DomainAdaptOptions:
    """Domain adaptation: LoRA on the language-model objective (domain-adapt, adapt-svc)."""

    TITLE: ClassVar[str] = "Domain adaptation"
    mlm_probability: float = option(0.15, "share of tokens masked for an encoder's masked-LM objective", min=0.01, max=0.5)
    answer_prompt: str = option(
        "\nAnswer:",
        "decoders, data with an answer column: the text between a letter and its answer; training letters are learnt with "
        "their answers after it, and the tuned model writes an answer after it for each test letter",
    )
    generate_letters: int | None = option(
        None, "decoders, data with an answer column: write answers for the first N test letters only (none: all)", min=1
    )
    generate_tokens: int = option(128, "decoders, data with an answer column: the most tokens of a written answer", min=1, max=1024)


@dataclass(frozen=True)
class PromptOptions:
    """A generative model as the classifier (zero-shot, few-shot, instruct-lora): the prompt, each label's words, and how
    their likelihood is scored."""

    TITLE: ClassVar[str] = "Prompting"
    prompt_template: str | None = option(
        None,
        "the prompt before the answer: {text} is the letter, {labels} the label words joined; the letter is cut, never "
        "the rest (none: 'Medical transcription: {text} Medical specialty ({labels}):', chosen on training letters)",
        multiline=True,
    )
    verbalizers: dict[str, str] | None = option(
        None, "the words that stand for each label, label=words (none: the label itself, '-' read as a space; the bundled task's own words)"
    )
    scoring: str = option(
        "sum",
        "a label's score: sum of its words' log-likelihoods, mean per token, or norm (per byte, lm-evaluation-harness's acc_norm)",
        choices=("sum", "mean", "norm"),
    )
    calibration: bool = option(True, "calibration: subtract each label's prior score (calibrate_on) from its score")
    calibrate_on: str = option(
        "letters",
        "the prior: letters: each label's mean score on calibration_letters training letters per label (never a test letter "
        "nor an example; chosen on training letters: few-shot 0.42 vs 0.27 macro-F1); content-free: 'N/A' and '[MASK]'",
        choices=("letters", "content-free"),
    )
    calibration_letters: int = option(5, "calibrate_on letters: training letters per label the prior is taken on", min=1, max=50)
    k_shot: int | None = option(
        None,
        "few-shot: examples per label from the training letters, each cut to its first tokens (none: as many as fit "
        "the context next to the letter, at least 1)",
        min=1,
    )
    with_letter_alone: bool = option(
        True,
        "few-shot: also score each letter without the examples and average the two calibrated scores (SmolLM2-135M on 60 "
        "training letters: examples alone 0.30 macro-F1, averaged 0.53, the letter alone 0.53: a tiny model copies labels "
        "from examples)",
    )
    chat_template: str = option(
        "off",
        "wrap the prompt in the tokenizer's chat template, the label words scored as the assistant's answer: auto (when the "
        "tokenizer has one: instruction-tuned models), on (refuse a model without one), off (the plain prompt: the measured "
        "default; SmolLM2's tokenizer has a chat template, not yet measured with it)",
        choices=CHAT_TEMPLATES,
    )
    server_prefix: str | None = option(
        None,
        "a model on a server: text put before every prompt, e.g. the model's first special token ('<|im_start|>' for "
        "SmolLM2): llama-cpp-python's server echoes log-probabilities one token out of place for a model whose tokenizer "
        "adds no such token, so give it there (none: nothing)",
    )
    allowed_hosts: list[str] | None = option(
        None,
        "a model on a server (openai-compat:MODEL@URL): the hosts besides this machine (loopback) that letters may be sent "
        "to, with those in CLINBENCH_ALLOWED_HOSTS; a server on any other host is refused before anything is sent",
        key=False,  # (where the server runs is in the model's identity)
    )


@dataclass(frozen=True)
class SetFitOptions:
    """Few-shot encoders (setfit): contrastive fine-tuning of a sentence encoder on pairs of training letters, then a
    logistic head."""

    TITLE: ClassVar[str] = "SetFit"
    setfit_pairs: int = option(2000, "most letter pairs per training (caps the time on a CPU)", min=10)
    setfit_epochs: int = option(1, "epochs over the pairs", min=1, max=20)
    setfit_max_length: int = option(
        128, "tokens per letter while training on pairs (the head's vectors read max_length); short keeps a CPU training to minutes", min=8
    )


EXECUTORS = ("local", "ray")


@dataclass(frozen=True)
class ExecutionOptions:
    """Where a run's steps execute: the background worker on this machine, or a Ray cluster (engine.rayexec). Results do not
    depend on it."""

    TITLE: ClassVar[str] = "Execution"
    executor: str = option(
        "local",
        "local: the background worker on this machine, one step at a time; ray: every step a Ray task, independent steps in "
        "parallel (needs the ray extra: scripts/setup.sh --ray)",
        choices=EXECUTORS,
        key=False,
    )
    ray_address: str | None = option(
        None, "ray: the cluster to use (host:6379, or ray://host:10001); none: $RAY_ADDRESS, else a local Ray instance", key=False
    )
    step_cpus: int = option(1, "ray: CPUs each step reserves (also its torch thread count)", min=1, max=256, key=False)
    step_gpus: float | None = option(
        None,
        "ray: GPUs each step reserves; none: 1 for steps that run a neural model when the cluster has a GPU, else 0",
        min=0,
        max=8,
        key=False,
    )
    extract_shards: int = option(
        1,
        "ray: shards one step's embedding extraction is split into (1: the step extracts alone); the step embeds one share, "
        "each other shard is a Ray task asking for step_cpus and step_gpus; the vectors are the same bit for bit",
        min=1,
        max=256,
        key=False,
    )


GROUPS: dict[str, type] = {
    "protocol": ProtocolOptions,
    "embedding": EmbeddingOptions,
    "classifier": ClassifierOptions,
    "decision": DecisionOptions,
    "finetune": FineTuneOptions,
    "domain": DomainAdaptOptions,
    "prompt": PromptOptions,
    "setfit": SetFitOptions,
    "execution": ExecutionOptions,
}


_FIELDS = field_specs(GROUPS)
_BY_NAME = {s.name: s for s in _FIELDS}


def fields(group: str | None = None) -> list[FieldSpec]:
    """Every option (of one concern), in declaration order."""
    return [s for s in _FIELDS if group is None or s.group == group]


def group_title(group: str) -> str:
    return GROUPS[group].TITLE


def group_doc(group: str) -> str:
    return (GROUPS[group].__doc__ or "").strip()


# --- all options of a run ----------------------------------------------------------


@dataclass(frozen=True)
class Options:
    """All options of a run, one member per concern. Spec files and manifests see them flat."""

    protocol: ProtocolOptions = field(default_factory=ProtocolOptions)
    embedding: EmbeddingOptions = field(default_factory=EmbeddingOptions)
    classifier: ClassifierOptions = field(default_factory=ClassifierOptions)
    decision: DecisionOptions = field(default_factory=DecisionOptions)
    finetune: FineTuneOptions = field(default_factory=FineTuneOptions)
    domain: DomainAdaptOptions = field(default_factory=DomainAdaptOptions)
    prompt: PromptOptions = field(default_factory=PromptOptions)
    setfit: SetFitOptions = field(default_factory=SetFitOptions)
    execution: ExecutionOptions = field(default_factory=ExecutionOptions)

    @classmethod
    def parse(cls, raw: Mapping | None, where: str = "spec", label=None) -> Options:
        """Options from a flat mapping (a spec's `options:`); every problem names the field. `label(spec)` names a field in errors."""
        if raw is None:
            raw = {}
        if not isinstance(raw, Mapping):
            raise SpecError(f"{where}: options must be a mapping, e.g. {{max_length: 256, epochs: 3}}.")
        values: dict[str, dict] = {g: {} for g in GROUPS}
        for name, value in raw.items():
            spec = _BY_NAME.get(name)
            if spec is None:
                close = difflib.get_close_matches(str(name), list(_BY_NAME), n=1)
                hint = f" Did you mean {close[0]!r}?" if close else ""
                raise SpecError(f"{where}: unknown option {name!r}.{hint} Options: {', '.join(_BY_NAME)}.")
            values[spec.group][name] = coerce(spec, value, where, label(spec) if label else None)
        return cls(**{g: GROUPS[g](**v) for g, v in values.items()})

    def to_dict(self) -> dict[str, Any]:
        """Every option, flat, as in a spec file (what manifests record as `config`)."""
        return {s.name: getattr(getattr(self, s.group), s.name) for s in _FIELDS}

    def get(self, name: str) -> Any:
        return getattr(getattr(self, _BY_NAME[name].group), name)

    def replace(self, **flat: Any) -> Options:
        """A copy with some options changed (checked like a spec's)."""
        return Options.parse({**self.to_dict(), **flat}, where="options")


def key_dict(group_options: Any) -> dict[str, Any]:
    """The fields of one concern's options that enter cache keys."""
    return {f.name: getattr(group_options, f.name) for f in dataclasses.fields(group_options) if f.metadata.get("key", True)}


def names(*groups: str) -> tuple[str, ...]:
    """The option names of some concerns, e.g. for a method's `reads` (engine.methods.base.Method)."""
    return tuple(s.name for g in groups for s in fields(g))
