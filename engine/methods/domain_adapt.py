"""The `domain-adapt` step: LoRA on the language-model objective over the training letters.

Masked LM for encoders (BERT masking, `mlm_probability` of the real tokens), causal LM for decoders;
the epoch is chosen on the validation letters' perplexity, and the test letters' perplexity is reported
before and after. Under `protocol: fixed` the dataset's own split is used (its training letters fit, less a validation
carve; its test letters are scored), otherwise a hold-out split.

When the dataset has reference answers (data option answer_column) and the model is a decoder, each training letter is
learnt followed by the answer prompt and its answer (never a test letter's answer), and the base and the tuned model
each write an answer to the test letters (engine.finetune.generation): ROUGE-L and BLEU against the references are
reported beside perplexity, and the written answers are kept in the artifact (generated.json), never logged.

The merged model is saved under cache/models/adapted-*/ and the registry lists it as a feature extractor
(engine.models.catalog.adapted_models).
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import replace

import numpy as np

from engine.cache import artifacts
from engine.cache.artifacts import StepResult
from engine.cache.context import StepContext, ensure
from engine.cache.storage import models_dir, sha256_json
from engine.data.dataset import Dataset
from engine.evaluation import scoring
from engine.features import extract
from engine.finetune import generation, loop
from engine.finetune.loading import load_lm_model, lora_config, lora_manifest
from engine.methods.base import StepKind
from engine.models import catalog
from engine.models.devices import choose
from engine.options.groups import Options, key_dict, names
from engine.protocols import plans


def mask_tokens(input_ids, mask, tokenizer, generator, prob: float):
    """BERT masking: `prob` of real, non-special tokens are predicted; 80% of them become [MASK], 10% random, 10% kept."""
    import torch

    labels = input_ids.clone()
    special = torch.zeros_like(input_ids, dtype=torch.bool)
    for sid in tokenizer.all_special_ids:
        special |= input_ids == sid
    chance = torch.full(input_ids.shape, prob)
    chance[special | (mask == 0)] = 0.0
    chosen = torch.bernoulli(chance, generator=generator).bool()
    labels[~chosen] = -100
    inputs = input_ids.clone()
    to_mask = torch.bernoulli(torch.full(input_ids.shape, 0.8), generator=generator).bool() & chosen
    inputs[to_mask] = tokenizer.mask_token_id
    to_random = torch.bernoulli(torch.full(input_ids.shape, 0.5), generator=generator).bool() & chosen & ~to_mask
    inputs[to_random] = torch.randint(len(tokenizer), input_ids.shape, generator=generator)[to_random]
    return inputs, labels


def lm_batch(kind: str, input_ids, mask, tokenizer, generator, mlm_probability: float):
    """(inputs, labels) of a batch for the model's own objective; labels -100 where nothing is predicted."""
    if kind == "encoder":
        return mask_tokens(input_ids, mask, tokenizer, generator, mlm_probability)
    labels = input_ids.clone()
    labels[mask == 0] = -100
    return input_ids, labels


def perplexity(
    net, kind: str, ids: list[np.ndarray], idx, tokenizer, placement, *, seed: int, mlm_probability: float, batch_size: int = 8
) -> float:
    """exp(mean token cross-entropy) on the letters `idx`: next-token for decoders, masked tokens (fixed masks) for encoders."""
    import torch

    lengths = [len(x) for x in ids]
    total, count = 0.0, 0
    with torch.inference_mode(), loop.autocast(placement):
        for b, batch in enumerate(loop.length_grouped_batches(lengths, np.asarray(idx), batch_size, None)):
            input_ids, mask = loop.collate(ids, batch, tokenizer.pad_token_id, placement.device)
            gen = torch.Generator().manual_seed(seed * 100003 + b)
            inputs, labels = lm_batch(kind, input_ids.cpu(), mask.cpu(), tokenizer, gen, mlm_probability)
            logits = net(input_ids=inputs.to(placement.device), attention_mask=mask).logits.float()
            if kind == "decoder":
                logits, labels = logits[:, :-1], labels[:, 1:]
            labels = labels.to(logits.device)
            total += float(
                torch.nn.functional.cross_entropy(
                    logits.reshape(-1, logits.shape[-1]), labels.reshape(-1), ignore_index=-100, reduction="sum"
                )
            )
            count += int((labels != -100).sum())
    return math.exp(total / max(count, 1))


def _write(net, tokenizer, dataset: Dataset, test, opts: Options, placement, ctx: StepContext, which: str):
    """{"written", "scores", "seconds"}: greedy answers of `net` to the first generate_letters test letters."""
    t = time.perf_counter()
    test = test[: opts.domain.generate_letters]
    prompts = generation.prompt_ids(tokenizer, [dataset.texts[i] for i in test], opts.domain.answer_prompt, opts.embedding.max_length)
    written = generation.generate(
        net,
        tokenizer,
        prompts,
        placement,
        max_new_tokens=opts.domain.generate_tokens,
        batch_size=32 if placement.device == "cuda" else 8,
        progress=lambda done, total: ctx.progress(done, total, f"answers written ({which} model)"),
    )
    scores = generation.scores(written, [dataset.answers[i] for i in test])
    return {"written": written, "scores": scores, "seconds": time.perf_counter() - t}


def train_lm_adapter(
    net,
    kind: str,
    tokenizer,
    train_ids,
    fit_idx,
    val_idx,
    opts: Options,
    method: str,
    placement,
    *,
    seed: int,
    key: str,
    head: list[str],
    ctx: StepContext,
):
    """LoRA adapters (plus the LM head the checkpoint lacked, `head`) trained on the model's own objective over the letters
    `fit_idx`, the epoch chosen on the perplexity of `val_idx`. Returns (the peft model, the training state of loop.train)."""
    import torch
    from peft import get_peft_model

    ft, mlm = opts.finetune.resolved(method), opts.domain.mlm_probability
    for param in net.parameters():
        param.requires_grad_(False)
    tuned = get_peft_model(net, lora_config(net, ft, "CAUSAL_LM" if kind == "decoder" else None, head))
    gen = torch.Generator().manual_seed(seed)

    def loss_fn(input_ids, mask, batch):
        inputs, labels = lm_batch(kind, input_ids.cpu(), mask.cpu(), tokenizer, gen, mlm)
        return tuned(input_ids=inputs.to(placement.device), attention_mask=mask, labels=labels.to(placement.device)).loss

    def validate() -> dict:
        ppl = perplexity(tuned, kind, train_ids, val_idx, tokenizer, placement, seed=seed + 1, mlm_probability=mlm)
        return {"val_perplexity": ppl, "score": -ppl}

    state = loop.train(tuned, train_ids, fit_idx, loss_fn, validate, ft, seed, placement, pad_id=tokenizer.pad_token_id, key=key, ctx=ctx)
    return tuned, state


def domain_adapt_step(dataset: Dataset, model: str, method: str, opts: Options, ctx: StepContext | None = None) -> StepResult:
    """LoRA on the language-model objective over the training letters; perplexity on the test letters before/after;
    the merged model is saved under cache/models/ and becomes selectable as a feature extractor."""
    ctx = ensure(ctx)
    t_start = time.perf_counter()
    placement = choose()
    entry = catalog.resolve(model)
    p, mlm = opts.protocol, opts.domain.mlm_probability
    plan = plans.plan(dataset, p if p.protocol == "fixed" else replace(p, protocol="holdout"))
    split = plan.folds[0]
    fit_idx, val_idx = plans.carve(dataset, split.train, plan.groups, opts.finetune.val_size, p.seed)
    identity = catalog.locate(entry)[1]
    answers = dataset.answers  # (decoders only learn and write them; the key names them whenever the data has them)
    extra = {
        "domain": key_dict(opts.domain),
        "plan": plan.hash,
        **({"answers": sha256_json(answers), "generation": generation.VERSION} if answers else {}),
    }
    key = loop.training_key(method, identity, dataset.data_hash, opts, placement.dtype, extra=extra)
    out = models_dir() / f"adapted-{catalog.safe_name(entry.name)}-{key[:12]}"
    if hit := artifacts.stored(out, entry.name, method):
        return hit
    ctx.progress(0, 1, "loading model")
    loop.seed_torch(loop.seed_of(p.seed, "adapt"))
    net, tokenizer, identity, kind, config, head = load_lm_model(model, placement)
    ids, n_truncated = extract.tokenize(tokenizer, dataset.texts, opts.embedding.max_length)
    ctx.progress(0, 1, "perplexity before")
    net.eval()
    ppl_before = perplexity(net, kind, ids, split.test, tokenizer, placement, seed=p.seed, mlm_probability=mlm)
    writes = answers is not None and kind == "decoder"
    if writes:  # training letters are learnt with their answers; test letters' answers are only references
        seen = np.concatenate([fit_idx, val_idx])
        texts, said = [dataset.texts[i] for i in seen], [answers[i] for i in seen]
        train_ids = list(ids)
        for i, x in zip(seen, generation.answer_ids(tokenizer, texts, said, opts.domain.answer_prompt, opts.embedding.max_length)):
            train_ids[i] = x
        before = _write(net, tokenizer, dataset, split.test, opts, placement, ctx, "base")
    else:
        train_ids = ids
    tuned, state = train_lm_adapter(
        net, kind, tokenizer, train_ids, fit_idx, val_idx, opts, method, placement, seed=p.seed, key=key, head=head, ctx=ctx
    )
    ctx.progress(0, 1, "perplexity after")
    ppl_after = perplexity(tuned, kind, ids, split.test, tokenizer, placement, seed=p.seed, mlm_probability=mlm)
    name = f"{catalog.safe_name(entry.name)}-adapted-{key[:8]}"
    m = {
        "perplexity_before": ppl_before,
        "perplexity_after": ppl_after,
        "perplexity_on": "test split letters",
        "adapted_model": name,
        "head_from_checkpoint": not head,
    }
    timings = {"train_s": state["train_s"]}
    if writes:
        after = _write(tuned, tokenizer, dataset, split.test, opts, placement, ctx, "tuned")
        m |= {f"{k}_before": v for k, v in before["scores"].items()} | {f"{k}_after": v for k, v in after["scores"].items()}
        m |= {"generated_letters": len(before["written"]), "answers_from": dataset.options["answer_column"]}
        timings |= {"generate_before_s": before["seconds"], "generate_after_s": after["seconds"]}
        written = [
            {"row": int(dataset.rows[i] if dataset.rows is not None else i), "reference": answers[i], "base": b, "tuned": t}
            for i, b, t in zip(split.test[: len(before["written"])], before["written"], after["written"])
        ]
    manifest = {
        "kind": "domain-adaptation",
        "key": key,
        "name": name,
        "model": {**identity, "kind": kind, "model_type": config.model_type},
        "method": method,
        "method_title": DOMAIN_ADAPT.title,
        "stage": DOMAIN_ADAPT.stage,
        "config": {**opts.to_dict(), "train": loop.train_config(opts.finetune.resolved(method), p.seed)},
        "objective": "masked LM" if kind == "encoder" else "causal LM",
        "data": artifacts.data_manifest(dataset),
        "protocol": plan.manifest(),
        "split": {"n_fit": int(len(fit_idx)), "n_val": int(len(val_idx)), "n_test": int(len(split.test))},
        # the letters the adaptation read (training and validation), so no evaluation scores it on them (scoring.require_unseen)
        "seen_letters": scoring.letter_hashes([dataset.texts[i] for i in np.concatenate([fit_idx, val_idx])]),
        "training": loop.training_manifest(state, head_modules=head, n_truncated=n_truncated, **lora_manifest(tuned)),
        "placement": {"device": placement.device, "dtype": placement.dtype},
        "timings": {**timings, "total_s": time.perf_counter() - t_start},
        **artifacts.provenance(m),  # versions, environment, metrics, created
    }

    def write_files(tmp):
        tuned.save_pretrained(tmp / "adapter")
        merged = tuned.merge_and_unload()
        merged.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        if writes:  # the written answers, for reading them (local cache only; never logged)
            (tmp / "generated.json").write_text(json.dumps(written, indent=1, ensure_ascii=False), encoding="utf-8")

    manifest = artifacts.write(out, manifest, write_files)
    loop.checkpoint_path(key).unlink(missing_ok=True)
    ctx.progress(1, 1, "done")
    return StepResult(entry.name, method, m, str(out), False, manifest)


DOMAIN_ADAPT = StepKind(
    "domain-adapt",
    "domain adaptation (LM objective)",
    "tuned",
    domain_adapt_step,
    ("seed", "test_size", "near_duplicates", "max_length", *names("finetune"), *names("domain")),  # (protocol: fixed or not)
    produces="model",
    label_sets=True,  # it reads the letters, not their labels
)
