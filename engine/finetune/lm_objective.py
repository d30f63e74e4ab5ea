"""The language-model objective: a model trained on its own objective over letters, without their labels.

Masked LM for encoders (BERT masking: `mlm_probability` of the real, non-special tokens are predicted; 80% of them become
[MASK], 10% a random token, 10% stay), causal LM (next token) for decoders. `perplexity` measures a model on letters
(fixed masks for encoders, so two models are measured on the same masked tokens), and `train_lm_adapter` trains LoRA
adapters on the objective with the shared loop (engine.finetune.loop), the epoch chosen on the perplexity of validation
letters. Used by domain-adapt (one adaptation, then a model) and adapt-svc (one adaptation per fold).
"""

from __future__ import annotations

import math

import numpy as np

from engine.cache.context import StepContext
from engine.finetune import loop
from engine.finetune.loading import lora_config
from engine.options.groups import Options


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
