"""The training loop every fine-tuning method shares, and the cache key of a training.

Length-grouped batches with dynamic padding, AdamW with linear warm-up and decay, bf16 autocast
where the device runs bf16 natively (weights and optimiser state stay fp32), gradient clipping,
cheap dropout masks on the CPU (engine.dropout), gradient checkpointing when the option asks for it. Training loss is logged every few optimiser steps
and the validation metrics after every epoch, through the step's context (`log_metric`), so the
Runs page draws the curves while training runs. After each epoch the trainable weights, optimiser,
scheduler and the curves so far are saved to cache/checkpoints/<key>.pt (atomically), so a cancelled
or crashed training resumes at its last finished epoch; the best epoch's weights are kept. Data order and
dropout masks are seeded per epoch from the training's seed, so a resumed training ends where an
uninterrupted one would.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from engine.cache.context import StepContext, ensure
from engine.cache.storage import atomic_path, checkpoints_dir, sha256_json
from engine.options.groups import Options, key_dict

FT_VERSION = 2  # (2: seeded, folds) bump when training changes its results, to invalidate stored fine-tuning artifacts
# Training batches are padded to a multiple of this many tokens: few distinct tensor shapes, so the allocator
# reuses freed activation blocks instead of fragmenting the heap (peak memory), for a little more padding.
PAD_MULTIPLE = 64
# About this many training-loss points per training: one every total_steps // LOSS_POINTS optimiser steps, at least every 10.
LOSS_POINTS = 100


def training_key(method: str, identity: dict, data_hash: str, opts: Options, dtype: str, extra: dict | None = None) -> str:
    """The cache key of a training: method, model, letters, the options that change what it produces, and the dtype."""
    ident = {k: v for k, v in identity.items() if k not in ("model_type", "kind")}
    ft = opts.finetune.resolved(method)
    options = {
        **key_dict(opts.finetune),
        "max_length": opts.embedding.max_length,
        "seed": opts.protocol.seed,
        "test_size": opts.protocol.test_size,
    }
    return sha256_json(
        {
            "v": FT_VERSION,
            "method": method,
            "model": ident,
            "data": data_hash,
            "options": options,
            "dtype": dtype,
            "lr": ft.learning_rate,
            "epochs": ft.epochs,
            "n_boot": opts.protocol.n_boot,
            **(extra or {}),
        }
    )[:32]


def seed_of(seed: int, tag: str) -> int:
    """The seed of one training of a step (tag: 'r0f3' for a fold, 'all' for the refit), derived from the run seed."""
    return int(np.random.SeedSequence([seed, *tag.encode()]).generate_state(1)[0] % 2**31)


def seed_torch(seed: int) -> None:
    """Seed torch's generators (CPU and CUDA): weight initialisation, dropout masks, LoRA's initial weights."""
    import torch

    torch.manual_seed(seed)


def length_grouped_batches(lengths: list[int], idx: np.ndarray, batch_size: int, rng: np.random.Generator | None) -> list[np.ndarray]:
    """Batches of similar length (little padding). With `rng`: shuffled, sorted within windows of 32 batches,
    batch order shuffled; without: sorted, for evaluation."""
    idx = np.asarray(idx)
    if rng is None:
        order = idx[np.argsort([-lengths[i] for i in idx], kind="stable")]
        return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
    idx = rng.permutation(idx)
    window = batch_size * 32
    batches = []
    for s in range(0, len(idx), window):
        chunk = idx[s : s + window]
        chunk = chunk[np.argsort([-lengths[i] for i in chunk], kind="stable")]
        batches += [chunk[j : j + batch_size] for j in range(0, len(chunk), batch_size)]
    return [batches[i] for i in rng.permutation(len(batches))]


def collate(ids: list[np.ndarray], batch, pad_id: int, device: str, multiple: int = 1):
    """Right-padded input ids and attention mask of a batch, padded to its longest letter rounded up to `multiple`."""
    import torch

    longest = -(-max(len(ids[i]) for i in batch) // multiple) * multiple
    input_ids = np.full((len(batch), longest), pad_id, dtype=np.int64)
    mask = np.zeros((len(batch), longest), dtype=np.int64)
    for row, i in enumerate(batch):
        input_ids[row, : len(ids[i])] = ids[i]
        mask[row, : len(ids[i])] = 1
    return torch.from_numpy(input_ids).to(device), torch.from_numpy(mask).to(device)


def autocast(placement):
    """bf16 autocast where the device computes bf16 natively; fp32 otherwise (fp16 training would need loss scaling)."""
    import torch

    if placement.dtype == "bfloat16":
        return torch.autocast(device_type=placement.device, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def checkpoint_path(key: str) -> Path:
    return checkpoints_dir() / f"{key}.pt"


def _log(state: dict, ctx: StepContext, name: str, value: float, step: int) -> None:
    state["log"].setdefault(name, []).append([int(step), float(value)])
    ctx.log_metric(name, value, step)


def checkpointing(net, on: bool) -> None:
    """Gradient checkpointing of a transformers model (or a peft model around one) on or off: each block's activations
    are recomputed in the backward pass, not kept. Non-reentrant, so frozen inputs need no gradient, and the random
    state is restored for the recomputation: the same dropout masks, the same weights. A model without blocks (a head
    on cached vectors) is left as it is."""
    if not on:
        if getattr(net, "is_gradient_checkpointing", False):
            net.gradient_checkpointing_disable()
        return
    if getattr(net, "supports_gradient_checkpointing", False):  # (a peft model answers for the model it wraps)
        net.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})


def train(
    net,
    ids: list[np.ndarray] | None,
    fit_idx: np.ndarray,
    loss_fn,
    validate,
    ft,
    seed: int,
    placement,
    *,
    pad_id: int,
    key: str,
    head_lr_factor: float = 1.0,
    is_head: Callable[[str], bool] = lambda name: False,
    ctx: StepContext | None = None,
) -> dict:
    """Train the parameters of `net` that require grad with the resolved FineTuneOptions `ft`.
    `loss_fn(input_ids, mask, batch) -> loss`; `validate() -> dict` of metrics with a `score` (higher is better).
    `ids` None: `net` reads no tokens (a head on cached vectors): shuffled batches of the `fit_idx` rows, and
    `loss_fn(None, None, batch)`.
    Parameters for which `is_head(name)` learn at `head_lr_factor` x the rate. Keeps the best epoch's weights in
    `net`; returns the state: per-epoch curve, metric log, best epoch, steps, tokens, timings."""
    import torch

    from engine.finetune.dropout import cheap_dropout  # (it imports transformers' attention code: only when training)

    ctx = ensure(ctx)
    checkpointing(net, getattr(ft, "gradient_checkpointing", False))
    named = [(n, p) for n, p in net.named_parameters() if p.requires_grad]
    params = [p for _, p in named]
    groups = [
        {"params": [p for n, p in named if not is_head(n)], "lr": ft.learning_rate},
        {"params": [p for n, p in named if is_head(n)], "lr": ft.learning_rate * head_lr_factor},
    ]
    opt = torch.optim.AdamW([g for g in groups if g["params"]], lr=ft.learning_rate, weight_decay=ft.weight_decay)
    lengths = [len(x) for x in ids] if ids is not None else [0] * (int(np.max(fit_idx)) + 1)
    n_batches = math.ceil(len(fit_idx) / ft.batch_size)
    steps_per_epoch = math.ceil(n_batches / ft.grad_accum)
    total_steps = steps_per_epoch * ft.epochs
    warmup = int(ft.warmup_ratio * total_steps)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: (s + 1) / max(1, warmup) if s < warmup else max(0.0, (total_steps - s) / max(1, total_steps - warmup))
    )
    log_every = min(10, max(1, total_steps // LOSS_POINTS))
    state = {
        "epoch": 0,
        "curve": [],
        "log": {},
        "best_score": -math.inf,
        "best_epoch": 0,
        "bad_epochs": 0,
        "train_s": 0.0,
        "tokens": 0,
        "steps": 0,
    }
    best: dict = {}
    ckpt = checkpoint_path(key)
    if ckpt.exists():
        try:
            saved = torch.load(ckpt, weights_only=True)
            net.load_state_dict(saved["trainable"], strict=False)
            opt.load_state_dict(saved["optimizer"])
            sched.load_state_dict(saved["scheduler"])
            best, state = saved["best"], {"log": {}, **json.loads(saved["state"])}
        except Exception:  # a checkpoint from another version: start again
            state["resumed_from_epoch"] = None
        else:
            state["resumed_from_epoch"] = state["epoch"]
            for name, points in state["log"].items():  # the curves so far, for the new attempt's live chart
                for step, value in points:
                    ctx.log_metric(name, value, step)
    for epoch in range(ft.epochs if state.get("stopped_early") else state["epoch"], ft.epochs):
        t0 = time.perf_counter()
        rng = np.random.default_rng(seed * 1000 + epoch)
        seed_torch(seed * 1000 + epoch)  # each epoch's dropout masks: the same whether the training ran through or resumed
        batches = length_grouped_batches(lengths, fit_idx, ft.batch_size, rng)
        net.train()
        losses, recent = [], []
        with cheap_dropout(net, placement.device):  # the same Bernoulli masks, a quarter of the random draws
            for b, batch in enumerate(batches):
                ctx.check_stop(
                    f"Training was cancelled in epoch {epoch + 1}; finished epochs are kept in a checkpoint, and no adapter was written."
                )
                input_ids, mask = collate(ids, batch, pad_id, placement.device, multiple=PAD_MULTIPLE) if ids is not None else (None, None)
                with autocast(placement):
                    loss = loss_fn(input_ids, mask, batch)
                (loss / ft.grad_accum).backward()
                losses.append(float(loss.detach()))
                recent.append(losses[-1])
                state["tokens"] += int(mask.sum()) if mask is not None else 0
                if (b + 1) % ft.grad_accum == 0 or b + 1 == len(batches):
                    torch.nn.utils.clip_grad_norm_(params, 1.0)
                    opt.step()
                    sched.step()
                    opt.zero_grad(set_to_none=True)
                    state["steps"] += 1
                    if state["steps"] % log_every == 0 or b + 1 == len(batches):
                        _log(state, ctx, "train_loss", float(np.mean(recent)), state["steps"])
                        recent = []
                ctx.progress(epoch * len(batches) + b + 1, ft.epochs * len(batches), f"training epoch {epoch + 1}/{ft.epochs}")
        state["train_s"] += time.perf_counter() - t0
        net.eval()
        ctx.progress(0, 1, f"validating epoch {epoch + 1}")
        val = validate()
        for name, value in val.items():
            if name != "score":
                _log(state, ctx, name, value, state["steps"])
        state["curve"].append({"epoch": epoch + 1, "train_loss": float(np.mean(losses)), **{k: v for k, v in val.items() if k != "score"}})
        if val["score"] > state["best_score"]:
            state["best_score"], state["best_epoch"], state["bad_epochs"] = val["score"], epoch + 1, 0
            best = {n: p.detach().clone() for n, p in named}
        else:
            state["bad_epochs"] += 1
        state["epoch"] = epoch + 1
        with atomic_path(ckpt) as tmp:
            torch.save(
                {
                    "trainable": {n: p.detach() for n, p in named},
                    "optimizer": opt.state_dict(),
                    "scheduler": sched.state_dict(),
                    "best": best,
                    "state": json.dumps(state),
                },
                tmp,
            )
        if state["bad_epochs"] >= ft.patience:
            state["stopped_early"] = True
            break
    if best:
        net.load_state_dict(best, strict=False)
    net.eval()
    return state


def training_manifest(state: dict, **extra) -> dict:
    """The `training` section of a manifest: per-epoch curve, logged metrics, best epoch, steps, tokens."""
    return {
        "curve": state["curve"],
        "log": state.get("log", {}),
        "best_epoch": state["best_epoch"],
        "epochs_run": state["epoch"],
        "stopped_early": bool(state.get("stopped_early")),
        "resumed_from_epoch": state.get("resumed_from_epoch"),
        "steps": state["steps"],
        "train_tokens": state["tokens"],
        **extra,
    }


def train_config(ft, seed: int) -> dict:
    """The resolved training options as the manifest records them (`config.train`)."""
    return {**dataclasses.asdict(ft), "seed": seed}


def folds_manifest(plan_name: str, final: dict, trainings: dict[str, dict]) -> dict:
    """The manifest's record of a step's trainings (one per fold, plus the stored classifier's): what the stored one was
    trained on, its training, and each fold's (a training dict: `training`, and `n_fit`/`n_val`/`val_index` when carved)."""
    sizes = ("n_fit", "n_val")
    return {
        "refit": "every letter" if plan_name == "cv" else "training split",
        "training": {**final["training"], **{k: final[k] for k in (*sizes, "val_index") if k in final}},
        "fold_trainings": {tag: {**t["training"], **{k: t[k] for k in sizes if k in t}} for tag, t in trainings.items()},
    }


def discard_staging(key: str, staging: Path, tags) -> None:
    """After a step's artifact is sealed: its per-fold staging folder and every training's checkpoint are removed."""
    import shutil

    shutil.rmtree(staging, ignore_errors=True)
    for tag in [*tags, "all", "r0f0"]:
        checkpoint_path(f"{key}-{tag}").unlink(missing_ok=True)
