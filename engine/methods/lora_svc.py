"""The `lora-svc` method: the LoRA-tuned model's letter vectors -> the frozen stage's SVC.

It runs (or reuses, by its cache key) the `lora` method's step: under cv one adapter per fold, trained on that fold's
training letters only, and one on every letter. For each fold it embeds every letter with that fold's tuned model
(adapter merged; cached under the tuned model's identity, base weights plus adapter hash) and fits the same calibrated
SVC as `svc` on the fold's training letters (engine.methods.vectors); the stored classifier is the SVC on the
every-letter model's vectors. The tuned model has read its training letters, so their out-of-fold SVC probabilities
are too sure of themselves: the harness chooses thresholds on those of the LoRA training's validation carve only, the
letters the tuned model never learnt from.
"""

from __future__ import annotations

import numpy as np

from engine.cache.storage import sha256_json
from engine.errors import ClinBenchError
from engine.features import extract
from engine.finetune.loading import load_tuned_extractor, tuned_identity
from engine.methods import harness, lora, vectors
from engine.methods.base import Job
from engine.methods.vectors import OnVectors, VectorMethod, evaluation_key


class OnCarvedVectors(OnVectors):
    """An estimator on tuned vectors whose decision letters are the tuned model's validation carve."""

    def __init__(self, fitted: OnVectors, carve: np.ndarray):
        super().__init__(fitted.job, fitted.X, fitted.train, fitted.result)
        self.carve = carve

    def decision_letters(self):
        letters = super().decision_letters()
        if letters is None:
            return None
        rows, proba = letters
        keep = np.isin(rows, self.carve)
        return rows[keep], proba[keep]


def carve_key(job: Job, base: str) -> str:
    """A key that says the decision letters are the validation carve (keys before ClinBench 0.3 chose on all of them)."""
    return sha256_json({"key": base, "decision_letters": "validation carve"})[:32] if job.needs_decision else base


class LoraSvc(VectorMethod):
    name = "lora-svc"
    title = "LoRA-tuned embeddings → SVC"
    stage = "tuned"
    estimator = "svc"
    reads = tuple(dict.fromkeys((*lora.READS, *vectors.READS)))
    after = ("lora",)

    def setup(self, job: Job) -> None:
        tuned = harness.evaluate(lora.METHOD, job.dataset, job.model, job.opts, job.ctx)
        if tuned.manifest["protocol"]["hash"] != job.plan.hash:
            raise ClinBenchError(
                "lora-svc needs the folds of its lora step; they differ (different cv_repeats for lora and lora-svc?). "
                "Give both the same number of repeats."
            )
        job.state.update(lora=tuned, embedded={})
        job.state["estats"] = self._embed(job, "")[1]
        job.identity = tuned_identity(tuned.manifest)

    def _embed(self, job: Job, prefix: str):
        if prefix not in job.state["embedded"]:
            tuned, e = job.state["lora"], job.opts.embedding
            model = extract.LazyModel(
                tuned_identity(tuned.manifest, prefix), job.placement, lambda: load_tuned_extractor(tuned.artifact, job.placement, prefix)
            )
            job.state["embedded"][prefix] = extract.embed(
                model,
                job.dataset.texts,
                pooling=e.pooling,
                max_length=e.max_length,
                batch_tokens=e.batch_tokens,
                windows=e.windows,
                ctx=job.ctx,
            )
        return job.state["embedded"][prefix]

    def key(self, job: Job) -> str:
        return carve_key(job, evaluation_key(job.state["estats"].key, "svc", self.name, job.opts, job.plan.hash, job.two_labels))

    def vectors(self, job: Job, tag: str) -> np.ndarray:
        return self._embed(job, "" if tag == "all" or job.plan.name != "cv" else f"folds/{tag}/")[0]

    def fit(self, job: Job, train: np.ndarray, tag: str, label: str) -> OnCarvedVectors:
        return OnCarvedVectors(super().fit(job, train, tag, label), job.carve(train)[1])

    def record(self, job: Job, final: OnVectors, fits: list[OnVectors]) -> dict:
        return {**super().record(job, final, fits), "lora_artifact": job.state["lora"].artifact}


METHOD = LoraSvc()
