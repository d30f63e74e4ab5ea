"""The `adapt-svc` method: domain adaptation inside each fold, then the frozen stage's SVC on the adapted model's vectors.

The design of the clinical-trial study ClinBench reproduces: LoRA on the language-model objective (masked LM for
encoders, causal LM for decoders; engine.finetune.lm_objective, as domain-adapt) over each fold's training letters only, the epoch chosen
on the perplexity of a validation carve of them; then every letter embedded with that fold's adapted model (adapter
merged) and the `svc` classifier fitted on the fold's training letters (engine.methods.vectors; one classifier per label
on label sets). No adaptation ever reads a letter it is scored on. Under cv one more adaptation over every letter gives
the stored classifier. Against `svc` on the same model, the same folds are scored: the difference is what adaptation
adds. Thresholds are chosen on the adaptation's validation carve (as lora-svc's). The adapters (small) are kept in the
artifact: adapter/ (the stored classifier's) and folds/<fold>/adapter/.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np

from engine.cache.storage import atomic_dir
from engine.features import extract
from engine.finetune import loop
from engine.finetune.lm_objective import train_lm_adapter
from engine.finetune.loading import load_adapted_extractor, load_lm_model, lora_manifest
from engine.methods import vectors
from engine.methods.base import Job
from engine.methods.lora_svc import OnCarvedVectors, carve_key
from engine.methods.vectors import OnVectors, VectorMethod, evaluation_key
from engine.models import catalog
from engine.options.groups import key_dict, names


class AdaptSvc(VectorMethod):
    name = "adapt-svc"
    title = "domain-adapted embeddings (LM objective, per fold) → SVC"
    stage = "tuned"
    estimator = "svc"
    reads = tuple(dict.fromkeys((*vectors.READS, *names("finetune"), *names("domain"))))

    def setup(self, job: Job) -> None:
        entry = catalog.resolve(job.model)
        base = {k: v for k, v in catalog.locate(entry)[1].items() if k not in ("model_type", "kind")}
        opts, plan = job.opts, job.plan
        adapted = loop.training_key(
            self.name, base, job.dataset.data_hash, opts, job.placement.dtype, extra={"domain": key_dict(opts.domain), "plan": plan.hash}
        )
        final = "all" if plan.name == "cv" else "r0f0"
        train_of = {"all": plan.final_train, **{f"r{f.repeat}f{f.fold}": f.train for f in plan.folds}}
        job.state.update(base=base, adapted=adapted, final=final, train_of=train_of, embedded={})
        job.state["estats"] = self._embed(job, final)[1]  # (the stored classifier's vectors name the evaluation's key)
        job.identity = {"name": entry.name, **self._identity(job, final)}

    def _identity(self, job: Job, tag: str) -> dict:
        return {**job.state["base"], "adapted": job.state["adapted"], "fold": tag}

    def _staging(self, job: Job) -> Path:
        return loop.checkpoint_path(job.state["adapted"]).with_suffix(".folds")

    def _adapter(self, job: Job, tag: str) -> Path:
        """The adapter trained on the letters of `tag` (validation carved from them), from staging when saved earlier."""
        out = self._staging(job) / tag
        if (out / "training.json").exists():
            return out / "adapter"
        fctx = job.fold_context(tag)
        fit_idx, val_idx = job.carve(job.state["train_of"][tag])
        seed = loop.seed_of(job.opts.protocol.seed, tag)
        loop.seed_torch(seed)
        fctx.progress(0, 1, "loading model")
        net, tokenizer, _identity, kind, _config, head = load_lm_model(job.model, job.placement)
        ids, n_truncated = extract.tokenize(tokenizer, job.dataset.texts, job.opts.embedding.max_length)
        key = f"{job.state['adapted']}-{tag}"
        tuned, state = train_lm_adapter(
            net, kind, tokenizer, ids, fit_idx, val_idx, job.opts, self.name, job.placement, seed=seed, key=key, head=head, ctx=fctx
        )
        training = {
            "training": loop.training_manifest(state, head_modules=head, n_truncated=n_truncated, **lora_manifest(tuned)),
            "objective": "masked LM" if kind == "encoder" else "causal LM",
            "n_fit": int(len(fit_idx)),
            "n_val": int(len(val_idx)),
        }
        with atomic_dir(out) as tmp:
            tuned.save_pretrained(tmp / "adapter")
            (tmp / "training.json").write_text(json.dumps(training))
        return out / "adapter"

    def _embed(self, job: Job, tag: str):
        if tag not in job.state["embedded"]:
            ident = self._identity(job, tag)
            lazy = extract.LazyModel(
                ident, job.placement, lambda: load_adapted_extractor(job.model, self._adapter(job, tag), job.placement, ident)
            )
            e = job.opts.embedding
            job.state["embedded"][tag] = extract.embed(
                lazy,
                job.dataset.texts,
                pooling=e.pooling,
                max_length=e.max_length,
                batch_tokens=e.batch_tokens,
                windows=e.windows,
                ctx=job.fold_context(tag),
            )
        return job.state["embedded"][tag]

    def key(self, job: Job) -> str:
        return carve_key(job, evaluation_key(job.state["estats"].key, "svc", self.name, job.opts, job.plan.hash, job.two_labels))

    def vectors(self, job: Job, tag: str) -> np.ndarray:
        return self._embed(job, tag)[0]

    def fit(self, job: Job, train: np.ndarray, tag: str, label: str) -> OnCarvedVectors:
        return OnCarvedVectors(super().fit(job, train, tag, label), job.carve(train)[1])

    def _tags(self, job: Job) -> list[str]:
        return ["all", *(f"r{f.repeat}f{f.fold}" for f in job.plan.folds)] if job.plan.name == "cv" else [job.state["final"]]

    def save(self, job: Job, final: OnVectors, folder: Path) -> None:
        """The estimator; the stored classifier's adapter at adapter/ and each fold's under folds/ (trained now if staging
        lost one)."""
        super().save(job, final, folder)
        for tag in self._tags(job):
            source = self._adapter(job, tag).parent
            target = folder / "adapter" if tag == job.state["final"] else folder / "folds" / tag / "adapter"
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copytree(source / "adapter", target)

    def record(self, job: Job, final: OnVectors, fits: list[OnVectors]) -> dict:
        staging, final_tag = self._staging(job), job.state["final"]
        runs = {
            tag: json.loads((staging / tag / "training.json").read_text())
            for tag in self._tags(job)
            if (staging / tag / "training.json").exists()
        }
        return {
            **super().record(job, final, fits),
            "adaptation": {
                "objective": runs.get(final_tag, {}).get("objective"),
                "letters": "each fold's training letters (a validation carve of them picks the epoch)",
                "domain": key_dict(job.opts.domain),
                "train": loop.train_config(job.opts.finetune.resolved(self.name), job.opts.protocol.seed),
                "training": runs.get(final_tag, {}),
                "fold_trainings": {tag: run for tag, run in runs.items() if tag != final_tag},
            },
            "adapter_key": job.state["adapted"],
        }

    def finish(self, job: Job, fits: list[OnVectors]) -> None:
        loop.discard_staging(job.state["adapted"], self._staging(job), self._tags(job))


METHOD = AdaptSvc()
