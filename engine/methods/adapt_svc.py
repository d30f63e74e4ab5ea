"""The `adapt-svc` step: domain adaptation inside each fold, then the frozen stage's SVC on the adapted model's vectors.

The design of the clinical-trial study ClinBench reproduces: LoRA on the language-model objective (masked LM for
encoders, causal LM for decoders; engine.finetune.domain) over each fold's training letters only, the epoch chosen on
the perplexity of a validation carve of them; then every letter embedded with that fold's adapted model (adapter merged)
and the `svc` classifier fitted on the fold's training letters (one classifier and one threshold per label on
multi-label data). No adaptation ever reads a letter it is scored on. Under cv one more adaptation over every letter
gives the stored classifier. Against `svc` on the same model, the same folds are scored: the difference is what
adaptation adds. The adapters (small) are kept in the artifact: adapter/ (the stored classifier's) and
folds/<fold>/adapter/.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

from engine.cache.artifacts import StepResult
from engine.cache.context import StepContext, ensure
from engine.cache.storage import atomic_dir
from engine.data.dataset import Dataset
from engine.evaluation import scoring
from engine.features import extract
from engine.finetune import loop
from engine.finetune.loading import load_adapted_extractor, load_lm_model, lora_manifest
from engine.methods.base import StepKind
from engine.methods.domain_adapt import train_lm_adapter
from engine.methods.frozen import READS as FROZEN_READS
from engine.methods.frozen import fit_on_embeddings
from engine.methods.lora import fold_context
from engine.models import catalog
from engine.models.devices import choose
from engine.options.groups import Options, key_dict, names
from engine.protocols import plans


def adapt_svc_step(dataset: Dataset, model: str, method: str, opts: Options, ctx: StepContext | None = None) -> StepResult:
    """For each fold: adapt the model to the fold's training letters (LM objective), embed every letter with it, fit and
    score the SVC; the stored classifier is the SVC on the vectors of the model adapted to every letter (cv) or to the
    training split (holdout, fixed)."""
    ctx = ensure(ctx)
    t_start = time.perf_counter()
    plan = plans.plan(dataset, opts.protocol, method)  # refuses before any training when a class cannot be scored
    placement = choose()
    entry = catalog.resolve(model)
    scoring.require_unseen(entry, dataset, plan)
    base = {k: v for k, v in catalog.locate(entry)[1].items() if k not in ("model_type", "kind")}
    p, e = opts.protocol, opts.embedding
    key = loop.training_key(
        method, base, dataset.data_hash, opts, placement.dtype, extra={"domain": key_dict(opts.domain), "plan": plan.hash}
    )
    staging = loop.checkpoint_path(key).with_suffix(".folds")
    final_tag = "all" if plan.name == "cv" else "r0f0"

    def identity(tag: str) -> dict:
        return {**base, "adapted": key, "fold": tag}

    def adapter(tag: str, train_idx, label: str) -> Path:
        """The adapter trained on `train_idx` (validation carved from it), from staging when an earlier attempt saved it."""
        out = staging / tag
        if (out / "training.json").exists():
            return out / "adapter"
        fctx = fold_context(ctx, label)
        fit_idx, val_idx = plans.carve(dataset, train_idx, plan.groups, opts.finetune.val_size, p.seed)
        seed = loop.seed_of(p.seed, tag)
        loop.seed_torch(seed)
        fctx.progress(0, 1, "loading model")
        net, tokenizer, _identity, kind, _config, head = load_lm_model(model, placement)
        ids, n_truncated = extract.tokenize(tokenizer, dataset.texts, e.max_length)
        tuned, state = train_lm_adapter(
            net, kind, tokenizer, ids, fit_idx, val_idx, opts, method, placement, seed=seed, key=f"{key}-{tag}", head=head, ctx=fctx
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

    embedded: dict[str, tuple] = {}

    def vectors_of(tag: str, train_idx, label: str):
        if tag not in embedded:
            lazy = extract.LazyModel(
                identity(tag), placement, lambda: load_adapted_extractor(model, adapter(tag, train_idx, label), placement, identity(tag))
            )
            embedded[tag] = extract.embed(
                lazy,
                dataset.texts,
                pooling=e.pooling,
                max_length=e.max_length,
                batch_tokens=e.batch_tokens,
                windows=e.windows,
                ctx=fold_context(ctx, label),
            )
        return embedded[tag]

    def vectors(fold):
        if fold is None:
            return vectors_of("all", plan.final_train, "all letters")[0]
        return vectors_of(f"r{fold.repeat}f{fold.fold}", fold.train, scoring.fold_label(plan, fold))[0]

    if plan.name == "cv":
        _, estats = vectors_of("all", plan.final_train, "all letters")
    else:
        _, estats = vectors_of(final_tag, plan.folds[0].train, "")
    tags = ["all"] + [f"r{f.repeat}f{f.fold}" for f in plan.folds] if plan.name == "cv" else [final_tag]

    def write_adapters(tmp: Path) -> None:
        """The stored classifier's adapter at adapter/ and each fold's under folds/ (trained now if staging lost one)."""
        train_of = {"all": plan.final_train, **{f"r{f.repeat}f{f.fold}": f.train for f in plan.folds}}
        for tag in tags:
            folder = adapter(tag, train_of[tag], tag).parent
            target = tmp / "adapter" if tag == final_tag else tmp / "folds" / tag / "adapter"
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copytree(folder / "adapter", target)

    def adaptation() -> dict:
        runs = {
            tag: json.loads((staging / tag / "training.json").read_text()) for tag in tags if (staging / tag / "training.json").exists()
        }
        final = runs.get(final_tag, {})
        return {
            "adaptation": {
                "objective": final.get("objective"),
                "letters": "each fold's training letters (a validation carve of them picks the epoch)",
                "domain": key_dict(opts.domain),
                "train": loop.train_config(opts.finetune.resolved(method), p.seed),
                "training": final,
                "fold_trainings": {tag: run for tag, run in runs.items() if tag != final_tag},
            },
            "adapter_key": key,
        }

    result = fit_on_embeddings(
        dataset,
        plan,
        vectors,
        estats,
        {"name": entry.name, **identity(final_tag)},
        ADAPT_SVC,
        opts,
        estimator="svc",
        placement=placement,
        ctx=ctx,
        t_start=t_start,
        extra=adaptation,
        write_extra=write_adapters,
    )
    loop.discard_staging(key, staging, tags)
    return result


ADAPT_SVC = StepKind(
    "adapt-svc",
    "domain-adapted embeddings (LM objective, per fold) → SVC",
    "tuned",
    adapt_svc_step,
    tuple(dict.fromkeys((*FROZEN_READS, *names("finetune"), *names("domain")))),
    label_sets=True,
)
