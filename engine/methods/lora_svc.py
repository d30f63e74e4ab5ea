"""The `lora-svc` step: embeddings from the LoRA-tuned model -> the frozen stage's SVC.

It trains (or reuses, by its cache key) the `lora` step's adapters: under cv one per fold, trained on that
fold's training letters only, and one on every letter. For each fold it embeds every letter with that
fold's tuned model (adapter merged; cached under the tuned model's identity, base weights plus adapter
hash) and fits the same calibrated SVC pipeline as `svc` on the fold's training letters; the stored
classifier is the SVC on the every-letter model's vectors. Multi-label data: the adapters are tuned with the lora step's
BCE head, and `fit_on_embeddings` fits one SVC and one threshold per label on the tuned vectors.
"""

from __future__ import annotations

import time

from engine.cache.artifacts import StepResult
from engine.cache.context import StepContext, ensure
from engine.data.dataset import Dataset
from engine.errors import ClinBenchError
from engine.features import extract
from engine.finetune.loading import load_tuned_extractor, tuned_identity
from engine.methods.base import StepKind
from engine.methods.frozen import READS as FROZEN_READS
from engine.methods.frozen import fit_on_embeddings
from engine.methods.lora import READS as HEAD_READS
from engine.methods.lora import classifier_step
from engine.models.devices import choose
from engine.options.groups import Options
from engine.protocols import plans


def lora_svc_step(dataset: Dataset, model: str, method: str, opts: Options, ctx: StepContext | None = None) -> StepResult:
    """Train (or reuse) the `lora` step's adapters, then for each fold embed every letter with the model tuned on that fold's
    training letters and fit the frozen stage's SVC on them; the stored classifier uses the stored adapter's vectors."""
    ctx = ensure(ctx)
    t_start = time.perf_counter()
    lora = classifier_step(dataset, model, "lora", opts, ctx)
    plan = plans.plan(dataset, opts.protocol, "lora-svc")
    if plan.hash != lora.manifest["protocol"]["hash"]:
        raise ClinBenchError(
            "lora-svc needs the folds of its lora step; they differ (different cv_repeats for lora and lora-svc?). "
            "Give both the same number of repeats."
        )
    placement = choose()
    e = opts.embedding
    embedded: dict[str, tuple] = {}

    def vectors_of(prefix: str):
        if prefix not in embedded:
            identity = tuned_identity(lora.manifest, prefix)
            embedded[prefix] = extract.embed(
                extract.LazyModel(identity, placement, lambda: load_tuned_extractor(lora.artifact, placement, prefix)),
                dataset.texts,
                pooling=e.pooling,
                max_length=e.max_length,
                batch_tokens=e.batch_tokens,
                windows=e.windows,
                ctx=ctx,
            )
        return embedded[prefix]

    def vectors(fold):
        if fold is None or plan.name != "cv":
            return vectors_of("")[0]
        return vectors_of(f"folds/r{fold.repeat}f{fold.fold}/")[0]

    _, estats = vectors_of("")
    return fit_on_embeddings(
        dataset,
        plan,
        vectors,
        estats,
        tuned_identity(lora.manifest),
        LORA_SVC,
        opts,
        estimator="svc",
        placement=placement,
        ctx=ctx,
        t_start=t_start,
        extra={"lora_artifact": lora.artifact},
    )


LORA_SVC = StepKind(
    "lora-svc",
    "LoRA-tuned embeddings → SVC",
    "tuned",
    lora_svc_step,
    tuple(dict.fromkeys((*HEAD_READS, *FROZEN_READS))),
    label_sets=True,
    after=("lora",),
)
