"""The `lora-svc` step: embeddings from the LoRA-tuned model -> the frozen stage's SVC.

It trains (or reuses, by its cache key) the `lora` step's adapter, embeds every letter with the tuned
model (adapter merged; cached under the tuned model's identity, base weights plus adapter hash), then
fits the same calibrated SVC pipeline as `svc` on the same training split.
"""

from __future__ import annotations

import time

from engine import features
from engine.artifacts import StepResult
from engine.context import StepContext, StepKind, ensure
from engine.data import Dataset
from engine.devices import choose
from engine.finetune.head import READS as HEAD_READS
from engine.finetune.head import classifier_step
from engine.finetune.loading import load_tuned_extractor, tuned_identity
from engine.frozen import READS as FROZEN_READS
from engine.frozen import fit_on_embeddings
from engine.options import Options


def lora_svc_step(dataset: Dataset, model: str, method: str, opts: Options, ctx: StepContext | None = None) -> StepResult:
    """Train (or reuse) the `lora` step's adapter, embed every letter with the tuned model, then the frozen stage's SVC."""
    ctx = ensure(ctx)
    t_start = time.perf_counter()
    lora = classifier_step(dataset, model, "lora", opts, ctx)
    placement = choose()
    identity = tuned_identity(lora.manifest)
    e = opts.embedding
    X, estats = features.embed(
        features.LazyModel(identity, placement, lambda: load_tuned_extractor(lora.artifact, placement)),
        dataset.texts,
        pooling=e.pooling,
        max_length=e.max_length,
        batch_tokens=e.batch_tokens,
        ctx=ctx,
    )
    return fit_on_embeddings(
        dataset,
        X,
        estats,
        identity,
        LORA_SVC,
        opts,
        estimator="svc",
        placement=placement,
        ctx=ctx,
        t_start=t_start,
        extra={"lora_artifact": lora.artifact},
    )


LORA_SVC = StepKind("lora-svc", "LoRA-tuned embeddings → SVC", "tuned", lora_svc_step, tuple(dict.fromkeys((*HEAD_READS, *FROZEN_READS))))
