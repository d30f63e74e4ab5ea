"""Fine-tuning methods: the model itself as the classifier, before and after LoRA, and domain adaptation.

* `linear-probe`  AutoModelForSequenceClassification with the pretrained weights frozen; only the head
                  is trained: the weights the checkpoint does not provide (classifier/score, and BERT's
                  pooler where the checkpoint has none). A random, untrained head is never reported.
* `lora`          peft LoRA adapters on the attention projections, trained together with the head
                  (`modules_to_save`); the adapter is saved in peft's format (`PeftModel.from_pretrained`).
* `lora-svc`      embeddings from the LoRA-tuned model -> the same SVC pipeline as the frozen stage.
* `domain-adapt`  LoRA on the language-model objective (masked LM for encoders, causal LM for decoders)
                  over the training letters, perplexity on the test letters before and after; the merged
                  model is saved under cache/models/ and the registry lists it as a feature extractor.

Splits: the test split is the frozen stage's (same seed and test_size); a stratified validation split
carved from the training split picks the epoch (early stopping) and is never the test split.

Training loop: length-grouped batches with dynamic padding, AdamW with linear warm-up and decay, bf16
autocast where the device runs bf16 natively (weights and optimiser state stay fp32), class-weighted
cross-entropy by default. After each epoch the trainable weights, optimiser and scheduler are saved to
cache/checkpoints/<key>.pt (atomically), so a cancelled or crashed training resumes at its last finished
epoch; the artifact folder (adapter included) is written only once training has finished.
"""

from __future__ import annotations

import contextlib
import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from engine import data as data_mod
from engine import evaluation, features
from engine.config import package_versions
from engine.errors import Cancelled, ClinBenchError
from engine.storage import atomic_dir, atomic_path, cache_dir, evaluations_dir, models_dir, read_manifest, seal_artifact, sha256_json

FT_VERSION = 1  # bump when training changes its results, to invalidate stored fine-tuning artifacts
DEFAULT_LR = {"linear-probe": 1e-2, "lora": 5e-4, "domain-adapt": 3e-4}
# A new head starts from random weights and must move far; LoRA adapters start at zero and need small
# steps. So under LoRA the head learns at HEAD_LR_FACTOR x the learning rate (cf. LoRA+).
HEAD_LR_FACTOR = 10.0
# Training batches are padded to a multiple of this many tokens: few distinct tensor shapes, so the allocator
# reuses freed activation blocks instead of fragmenting the heap (peak memory), for a little more padding.
PAD_MULTIPLE = 64
DEFAULT_EPOCHS = {"linear-probe": 8, "lora": 4, "domain-adapt": 2}
# Options that change what training produces (and so its cache key).
TRAIN_KEYS = (
    "epochs",
    "learning_rate",
    "warmup_ratio",
    "batch_size",
    "grad_accum",
    "weight_decay",
    "lora_r",
    "lora_alpha",
    "lora_dropout",
    "target_modules",
    "class_weighted_loss",
    "patience",
    "val_size",
    "max_length",
    "seed",
    "test_size",
)

Progress = Callable[[int, int, str], None]


@dataclass
class TrainConfig:
    epochs: int
    learning_rate: float
    warmup_ratio: float
    batch_size: int
    grad_accum: int
    weight_decay: float
    patience: int
    seed: int

    @classmethod
    def from_options(cls, method: str, opts: dict) -> TrainConfig:
        return cls(
            epochs=opts["epochs"] or DEFAULT_EPOCHS[method],
            learning_rate=opts["learning_rate"] or DEFAULT_LR[method],
            warmup_ratio=opts["warmup_ratio"],
            batch_size=opts["batch_size"],
            grad_accum=opts["grad_accum"],
            weight_decay=opts["weight_decay"],
            patience=opts["patience"],
            seed=opts["seed"],
        )


# --- splits ------------------------------------------------------------------------


def three_way_split(dataset: data_mod.Dataset, opts: dict) -> tuple[data_mod.Split, np.ndarray, np.ndarray]:
    """(the frozen stage's train/test split, fitting indices, validation indices); validation comes from train only."""
    from sklearn.model_selection import train_test_split

    split = data_mod.split(dataset, test_size=opts["test_size"], seed=opts["seed"])
    labels = np.asarray(dataset.labels, dtype=str)[split.train] if not dataset.multi_label else None
    n_classes = len(set(labels)) if labels is not None else 1
    n_val = int(math.ceil(opts["val_size"] * len(split.train)))
    stratify = labels if labels is not None and n_val >= n_classes and min(np.unique(labels, return_counts=True)[1]) >= 2 else None
    fit_idx, val_idx = train_test_split(split.train, test_size=opts["val_size"], random_state=opts["seed"], stratify=stratify)
    return split, np.sort(fit_idx), np.sort(val_idx)


# --- loading ------------------------------------------------------------------------


def _check_training_memory(name: str, n_params: int, placement) -> None:
    """Training keeps fp32 weights, gradients of the trainable part, optimiser state and activations: refuse up front."""
    from engine.devices import Placement
    from engine.models import check_fits

    check_fits(f"{name} (training)", int(n_params * 1.5), Placement(placement.device, "float32"))


def _prepare_tokenizer(tokenizer, config) -> None:
    """Decoders often have no pad token: use eos (right padding; the model finds the last real token from the mask)."""
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token or tokenizer.unk_token
    tokenizer.padding_side = "right"
    if getattr(config, "pad_token_id", None) is None:
        config.pad_token_id = tokenizer.pad_token_id


def load_classifier_model(model: str, classes: list[str], placement):
    """(AutoModelForSequenceClassification in fp32, tokenizer, identity, kind, head module names)."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from engine import models

    entry = models.resolve(model)
    folder, identity = models.locate(entry)
    config = models.load_config(folder)
    kind = models.model_kind(config)
    _check_training_memory(entry.name, models.count_parameters(config), placement)
    try:
        tokenizer = AutoTokenizer.from_pretrained(folder)
        _prepare_tokenizer(tokenizer, config)
        config.num_labels = len(classes)
        config.id2label, config.label2id = dict(enumerate(classes)), {c: i for i, c in enumerate(classes)}
        net, info = AutoModelForSequenceClassification.from_pretrained(
            folder, config=config, dtype=torch.float32, output_loading_info=True, ignore_mismatched_sizes=True
        )
    except (OSError, ValueError) as exc:
        raise ClinBenchError(f"{entry.name} cannot be loaded as a sequence classifier: {str(exc).splitlines()[0][:240]}") from None
    net.config.pad_token_id = tokenizer.pad_token_id
    head = head_modules(net, info)
    return net.to(placement.device), tokenizer, {**identity, "model_type": config.model_type}, kind, head


def head_modules(net, info: dict) -> list[str]:
    """Names of the modules whose weights the checkpoint did not provide: the new classification head."""
    missing = set(info.get("missing_keys", [])) | {k for k, *_ in info.get("mismatched_keys", [])}
    names = sorted({k.rsplit(".", 1)[0] for k in missing})
    if not names:  # a checkpoint that already has a head of the right shape
        names = [n for n, _ in net.named_children() if n in ("classifier", "score")]
    return names


def default_target_modules(net) -> list[str]:
    """LoRA targets by architecture: query/value (BERT family), q/k/v (BioGPT), q/v (LLaMA family), c_attn (GPT-2)."""
    import torch

    leaves = {n.rsplit(".", 1)[-1] for n, m in net.named_modules() if isinstance(m, torch.nn.Linear)}
    model_type = getattr(net.config, "model_type", "")
    if {"query", "value"} <= leaves:
        return ["query", "value"]
    if model_type == "biogpt" and {"q_proj", "k_proj", "v_proj"} <= leaves:
        return ["q_proj", "k_proj", "v_proj"]
    if {"q_proj", "v_proj"} <= leaves:
        return ["q_proj", "v_proj"]
    if "c_attn" in leaves:
        return ["c_attn"]
    raise ClinBenchError(
        f"No default LoRA target modules for model type {model_type!r}. Set the option target_modules to the names "
        f"of its attention projections, e.g. one of: {', '.join(sorted(leaves)[:12])}."
    )


def _lora_config(net, opts: dict, task: str, head: list[str]):
    from peft import LoraConfig

    return LoraConfig(
        task_type=task,
        r=opts["lora_r"],
        lora_alpha=opts["lora_alpha"],
        lora_dropout=opts["lora_dropout"],
        target_modules=opts["target_modules"] or default_target_modules(net),
        modules_to_save=head or None,
    )


# --- batches ---------------------------------------------------------------------------


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


# --- the training loop -------------------------------------------------------------------


def checkpoint_path(key: str) -> Path:
    path = cache_dir() / "checkpoints"
    path.mkdir(parents=True, exist_ok=True)
    return path / f"{key}.pt"


def train(
    net,
    ids: list[np.ndarray],
    fit_idx: np.ndarray,
    loss_fn,
    validate,
    cfg: TrainConfig,
    placement,
    *,
    pad_id: int,
    key: str,
    head_lr_factor: float = 1.0,
    is_head: Callable[[str], bool] = lambda name: False,
    progress: Progress | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> dict:
    """Train the parameters of `net` that require grad. `loss_fn(input_ids, mask, batch) -> loss`; `validate() -> dict`
    with a `score` (higher is better). Parameters for which `is_head(name)` learn at `head_lr_factor` x the rate.
    Keeps the best epoch's weights in `net`; returns the curve and timings."""
    import torch

    from engine.dropout import cheap_dropout

    named = [(n, p) for n, p in net.named_parameters() if p.requires_grad]
    params = [p for _, p in named]
    groups = [
        {"params": [p for n, p in named if not is_head(n)], "lr": cfg.learning_rate},
        {"params": [p for n, p in named if is_head(n)], "lr": cfg.learning_rate * head_lr_factor},
    ]
    opt = torch.optim.AdamW([g for g in groups if g["params"]], lr=cfg.learning_rate, weight_decay=cfg.weight_decay)
    lengths = [len(x) for x in ids]
    n_batches = math.ceil(len(fit_idx) / cfg.batch_size)
    steps_per_epoch = math.ceil(n_batches / cfg.grad_accum)
    total_steps = steps_per_epoch * cfg.epochs
    warmup = int(cfg.warmup_ratio * total_steps)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: (s + 1) / max(1, warmup) if s < warmup else max(0.0, (total_steps - s) / max(1, total_steps - warmup))
    )
    state = {"epoch": 0, "curve": [], "best_score": -math.inf, "best_epoch": 0, "bad_epochs": 0, "train_s": 0.0, "tokens": 0, "steps": 0}
    best: dict = {}
    ckpt = checkpoint_path(key)
    if ckpt.exists():
        try:
            saved = torch.load(ckpt, weights_only=True)
            net.load_state_dict(saved["trainable"], strict=False)
            opt.load_state_dict(saved["optimizer"])
            sched.load_state_dict(saved["scheduler"])
            best, state = saved["best"], json.loads(saved["state"])
        except Exception:  # a checkpoint from another version: start again
            state["resumed_from_epoch"] = None
        else:
            state["resumed_from_epoch"] = state["epoch"]
    for epoch in range(state["epoch"], cfg.epochs):
        t0 = time.perf_counter()
        rng = np.random.default_rng(cfg.seed * 1000 + epoch)
        batches = length_grouped_batches(lengths, fit_idx, cfg.batch_size, rng)
        net.train()
        losses = []
        with cheap_dropout(net, placement.device):  # the same Bernoulli masks, a quarter of the random draws
            for b, batch in enumerate(batches):
                if should_stop and should_stop():
                    raise Cancelled(
                        f"Training was cancelled in epoch {epoch + 1}; finished epochs are kept in a checkpoint, "
                        "and no adapter was written."
                    )
                input_ids, mask = collate(ids, batch, pad_id, placement.device, multiple=PAD_MULTIPLE)
                with autocast(placement):
                    loss = loss_fn(input_ids, mask, batch)
                (loss / cfg.grad_accum).backward()
                losses.append(float(loss.detach()))
                state["tokens"] += int(mask.sum())
                if (b + 1) % cfg.grad_accum == 0 or b + 1 == len(batches):
                    torch.nn.utils.clip_grad_norm_(params, 1.0)
                    opt.step()
                    sched.step()
                    opt.zero_grad(set_to_none=True)
                    state["steps"] += 1
                if progress:
                    progress(epoch * len(batches) + b + 1, cfg.epochs * len(batches), f"training epoch {epoch + 1}/{cfg.epochs}")
        state["train_s"] += time.perf_counter() - t0
        net.eval()
        if progress:
            progress(0, 1, f"validating epoch {epoch + 1}")
        val = validate()
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
        if state["bad_epochs"] >= cfg.patience:
            state["stopped_early"] = True
            break
    if best:
        net.load_state_dict(best, strict=False)
    net.eval()
    return state


# --- classification: linear probe and LoRA ------------------------------------------------


def _class_weights(y: np.ndarray, n_classes: int, enabled: bool):
    import torch

    if not enabled:
        return None
    counts = np.bincount(y, minlength=n_classes).astype(float)
    w = len(y) / (n_classes * np.maximum(counts, 1))
    return torch.tensor(w, dtype=torch.float32)


def predict_proba(net, ids: list[np.ndarray], idx, pad_id: int, placement, batch_size: int = 16) -> np.ndarray:
    """Softmax probabilities for the letters `idx`, in that order."""
    import torch

    lengths = [len(x) for x in ids]
    out = np.zeros((len(idx), net.config.num_labels), dtype=np.float32)
    pos = {int(i): r for r, i in enumerate(idx)}
    with torch.inference_mode(), autocast(placement):
        for batch in length_grouped_batches(lengths, np.asarray(idx), batch_size, None):
            input_ids, mask = collate(ids, batch, pad_id, placement.device)
            logits = net(input_ids=input_ids, attention_mask=mask).logits.float()
            out[[pos[int(i)] for i in batch]] = torch.softmax(logits, -1).cpu().numpy()
    return out


def prepare_trainable(net, method: str, head: list[str], opts: dict):
    """Freeze the pretrained weights; make trainable the head (linear-probe) or LoRA adapters plus the head (lora).
    Returns (the model to train, the LoRA target modules or None)."""
    for p in net.parameters():
        p.requires_grad_(False)
    if method == "linear-probe":
        for name in head:
            for p in net.get_submodule(name).parameters():
                p.requires_grad_(True)
        return net, None
    from peft import get_peft_model

    targets = opts["target_modules"] or default_target_modules(net)
    return get_peft_model(net, _lora_config(net, {**opts, "target_modules": targets}, "SEQ_CLS", head)), targets


def _stored(folder: Path, model: str, method: str):
    """The finished artifact in `folder` as a StepResult (a cache hit), or None when absent or damaged."""
    from engine.experiment import StepResult

    if (folder / "manifest.json").exists():
        with contextlib.suppress(ClinBenchError, KeyError):
            manifest = read_manifest(folder)
            return StepResult(model, method, manifest["metrics"], str(folder), True, manifest)
    return None


def _artifact_key(method: str, identity: dict, dataset: data_mod.Dataset, opts: dict, placement) -> str:
    ident = {k: v for k, v in identity.items() if k not in ("model_type", "kind")}
    return sha256_json(
        {
            "v": FT_VERSION,
            "method": method,
            "model": ident,
            "data": dataset.data_hash,
            "options": {k: opts[k] for k in TRAIN_KEYS},
            "dtype": placement.dtype,
            "lr": opts["learning_rate"] or DEFAULT_LR.get(method),
            "epochs": opts["epochs"] or DEFAULT_EPOCHS.get(method),
            "n_boot": opts["n_boot"],
        }
    )[:32]


def classifier_step(
    dataset: data_mod.Dataset,
    model: str,
    method: str,
    options: dict | None = None,
    *,
    progress: Progress | None = None,
    should_stop: Callable[[], bool] | None = None,
):
    """`linear-probe` or `lora`: train on the fitting split, pick the epoch on validation, score the test split once."""
    import torch

    from engine.devices import choose
    from engine.experiment import (
        DEFAULT_OPTIONS,
        METHOD_TITLES,
        StepResult,
        check_single_label,
        data_manifest,
        split_manifest,
        write_predictions,
    )

    opts = {**DEFAULT_OPTIONS, **(options or {})}
    if method not in ("linear-probe", "lora"):
        raise ClinBenchError(f"classifier_step runs linear-probe or lora, not {method!r}.")
    check_single_label(dataset)
    t_start = time.perf_counter()
    placement = choose()
    classes = dataset.classes
    split, fit_idx, val_idx = three_way_split(dataset, opts)
    from engine import models

    entry = models.resolve(model)
    key = _artifact_key(method, models.locate(entry)[1], dataset, opts, placement)
    folder = evaluations_dir() / key
    if stored := _stored(folder, entry.name, method):
        return stored
    if progress:
        progress(0, 1, "loading model")
    net, tokenizer, identity, kind, head = load_classifier_model(model, classes, placement)
    cfg = TrainConfig.from_options(method, opts)
    trained, targets = prepare_trainable(net, method, head, opts)
    n_trainable = sum(p.numel() for p in trained.parameters() if p.requires_grad)
    if progress:
        progress(0, len(dataset), "tokenising")
    ids, n_truncated = features.tokenize(tokenizer, dataset.texts, opts["max_length"])
    y_all = np.asarray([classes.index(str(v)) for v in dataset.labels])
    weights = _class_weights(y_all[fit_idx], len(classes), opts["class_weighted_loss"])
    pad_id = tokenizer.pad_token_id
    y_t = torch.from_numpy(y_all)

    def loss_fn(input_ids, mask, batch):
        logits = trained(input_ids=input_ids, attention_mask=mask).logits.float()
        return torch.nn.functional.cross_entropy(
            logits, y_t[batch].to(logits.device), weight=weights.to(logits.device) if weights is not None else None
        )

    def validate() -> dict:
        proba = predict_proba(trained, ids, val_idx, pad_id, placement)
        y_val = y_all[val_idx]
        loss = float(-np.mean(np.log(np.clip(proba[np.arange(len(val_idx)), y_val], 1e-12, None))))
        from sklearn.metrics import f1_score

        f1 = float(f1_score(y_val, proba.argmax(1), average="macro", labels=list(range(len(classes))), zero_division=0))
        return {"val_macro_f1": f1, "val_loss": loss, "score": f1 - 1e-6 * loss}

    state = train(
        trained,
        ids,
        fit_idx,
        loss_fn,
        validate,
        cfg,
        placement,
        pad_id=pad_id,
        key=key,
        progress=progress,
        should_stop=should_stop,
        head_lr_factor=HEAD_LR_FACTOR if method == "lora" else 1.0,
        is_head=lambda name: "modules_to_save" in name,
    )
    if progress:
        progress(0, 1, "scoring the test split")
    t_pred = time.perf_counter()
    proba = predict_proba(trained, ids, split.test, pad_id, placement)
    predict_s = time.perf_counter() - t_pred
    y_true = np.asarray(classes)[y_all[split.test]]
    y_pred = np.asarray(classes)[proba.argmax(1)]
    m = evaluation.metrics(y_true, y_pred, n_boot=opts["n_boot"], seed=opts["seed"])
    m["baseline"] = evaluation.majority_baseline(np.asarray(classes)[y_all[split.train]], y_true)
    manifest = {
        "kind": "evaluation",
        "key": key,
        "model": {**identity, "kind": kind},
        "method": method,
        "method_title": METHOD_TITLES[method],
        "stage": "frozen" if method == "linear-probe" else "tuned",
        "config": {**opts, "train": cfg.__dict__},
        "data": data_manifest(dataset),
        "split": {**split_manifest(split), "n_fit": int(len(fit_idx)), "n_val": int(len(val_idx)), "val_index": val_idx.tolist()},
        "training": {
            "curve": state["curve"],
            "best_epoch": state["best_epoch"],
            "epochs_run": state["epoch"],
            "stopped_early": bool(state.get("stopped_early")),
            "resumed_from_epoch": state.get("resumed_from_epoch"),
            "steps": state["steps"],
            "train_tokens": state["tokens"],
            "trainable_params": int(n_trainable),
            "head_modules": head,
            "target_modules": targets,
            "n_truncated": n_truncated,
        },
        "placement": {
            "device": placement.device,
            "dtype": placement.dtype,
            "weights": "float32",
            "autocast": placement.dtype if placement.dtype == "bfloat16" else None,
        },
        "timings": {"train_s": state["train_s"], "predict_s": predict_s, "total_s": time.perf_counter() - t_start},
        "versions": package_versions(),
        "metrics": m,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    with atomic_dir(folder) as tmp:
        if method == "lora":
            trained.save_pretrained(tmp / "adapter")
        else:
            from safetensors.torch import save_file

            save_file({n: p.detach().contiguous() for n, p in trained.named_parameters() if p.requires_grad}, tmp / "head.safetensors")
        write_predictions(tmp, split.test, y_true, y_pred, classes, "probability", proba)
        manifest = seal_artifact(tmp, manifest)
    checkpoint_path(key).unlink(missing_ok=True)
    if progress:
        progress(1, 1, "done")
    return StepResult(identity["name"], method, m, str(folder), False, manifest)


def load_tuned_classifier(artifact: str | Path, placement=None):
    """Rebuild a stored linear-probe or LoRA classifier (base model + head or adapter) after checking its files' hashes.
    Returns (net in eval mode, tokenizer, manifest)."""
    from engine.devices import choose
    from engine.storage import verified_file

    placement = placement or choose()
    folder = Path(artifact)
    manifest = read_manifest(folder)
    classes = manifest["data"]["classes"]
    net, tokenizer, _identity, _kind, _head = load_classifier_model(manifest["model"]["name"], classes, placement)
    if manifest["method"] == "lora":
        from peft import PeftModel

        for name in manifest["files"]:
            if name.startswith("adapter/"):
                verified_file(folder, name)
        net = PeftModel.from_pretrained(net, folder / "adapter")
    else:
        from safetensors.torch import load_file

        net.load_state_dict(load_file(verified_file(folder, "head.safetensors")), strict=False)
    return net.eval(), tokenizer, manifest


# --- LoRA-tuned embeddings -> SVC ----------------------------------------------------------


def tuned_identity(lora_manifest: dict) -> dict:
    """The identity of a LoRA-tuned model: its base's identity plus the adapter (cache keys depend on it)."""
    base = {k: v for k, v in lora_manifest["model"].items() if k not in ("model_type", "kind")}
    return {
        **base,
        "adapter": lora_manifest["key"],
        "adapter_sha256": sha256_json({k: v for k, v in lora_manifest["files"].items() if k.startswith("adapter/")}),
    }


def load_tuned_extractor(lora_artifact: str | Path, placement=None):
    """The LoRA-tuned model (adapter merged) as a feature extractor: a LoadedModel whose `model` is the backbone."""
    from engine import models
    from engine.devices import choose

    placement = placement or choose()
    net, tokenizer, manifest = load_tuned_classifier(lora_artifact, placement)
    merged = net.merge_and_unload()
    backbone = getattr(merged, merged.base_model_prefix).to(placement.torch_dtype).eval()
    for p in backbone.parameters():
        p.requires_grad_(False)
    kind = manifest["model"]["kind"]
    return models.LoadedModel(
        models.resolve(manifest["model"]["name"]),
        backbone,
        tokenizer,
        kind,
        {**tuned_identity(manifest), "model_type": manifest["model"].get("model_type"), "kind": kind},
        placement,
        Path(lora_artifact),
        merged.config,
    )


def lora_svc_step(
    dataset: data_mod.Dataset,
    model: str,
    method: str = "lora-svc",
    options: dict | None = None,
    *,
    progress: Progress | None = None,
    should_stop: Callable[[], bool] | None = None,
):
    """Train (or reuse) the `lora` step's adapter, embed every letter with the tuned model, then the frozen stage's SVC."""

    from engine.devices import choose
    from engine.experiment import DEFAULT_OPTIONS, fit_on_embeddings

    opts = {**DEFAULT_OPTIONS, **(options or {})}
    t_start = time.perf_counter()
    lora = classifier_step(dataset, model, "lora", opts, progress=progress, should_stop=should_stop)
    placement = choose()
    identity = tuned_identity(lora.manifest)

    X, estats = features.embed(
        features.LazyModel(identity, placement, lambda: load_tuned_extractor(lora.artifact, placement)),
        dataset.texts,
        pooling=opts["pooling"],
        max_length=opts["max_length"],
        batch_tokens=opts["batch_tokens"],
        progress=progress,
        should_stop=should_stop,
    )
    return fit_on_embeddings(
        dataset,
        X,
        estats,
        identity,
        method,
        opts,
        classifier="svc",
        stage="tuned",
        placement=placement,
        progress=progress,
        should_stop=should_stop,
        t_start=t_start,
        extra={"lora_artifact": lora.artifact},
    )


# --- domain adaptation ------------------------------------------------------------------------


def _mask_tokens(input_ids, mask, tokenizer, generator, prob: float = 0.15):
    """BERT masking: 15% of real, non-special tokens are predicted; 80% of them become [MASK], 10% random, 10% kept."""
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


def _lm_batch(kind: str, input_ids, mask, tokenizer, generator):
    if kind == "encoder":
        return _mask_tokens(input_ids, mask, tokenizer, generator)
    labels = input_ids.clone()
    labels[mask == 0] = -100
    return input_ids, labels


def perplexity(net, kind: str, ids: list[np.ndarray], idx, tokenizer, placement, *, seed: int, batch_size: int = 8) -> float:
    """exp(mean token cross-entropy) on the letters `idx`: next-token for decoders, masked tokens (fixed masks) for encoders."""
    import torch

    lengths = [len(x) for x in ids]
    total, count = 0.0, 0
    with torch.inference_mode(), autocast(placement):
        for b, batch in enumerate(length_grouped_batches(lengths, np.asarray(idx), batch_size, None)):
            input_ids, mask = collate(ids, batch, tokenizer.pad_token_id, placement.device)
            gen = torch.Generator().manual_seed(seed * 100003 + b)
            inputs, labels = _lm_batch(kind, input_ids.cpu(), mask.cpu(), tokenizer, gen)
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


def domain_adapt_step(
    dataset: data_mod.Dataset,
    model: str,
    method: str = "domain-adapt",
    options: dict | None = None,
    *,
    progress: Progress | None = None,
    should_stop: Callable[[], bool] | None = None,
):
    """LoRA on the language-model objective over the training letters; perplexity on the test letters before/after;
    the merged model is saved under cache/models/ and becomes selectable as a feature extractor."""
    import torch
    from transformers import AutoModelForCausalLM, AutoModelForMaskedLM, AutoTokenizer

    from engine import models
    from engine.devices import choose
    from engine.experiment import DEFAULT_OPTIONS, METHOD_TITLES, StepResult, data_manifest, split_manifest

    opts = {**DEFAULT_OPTIONS, **(options or {})}
    t_start = time.perf_counter()
    placement = choose()
    entry = models.resolve(model)
    folder_in, identity = models.locate(entry)
    config = models.load_config(folder_in)
    kind = models.model_kind(config)
    _check_training_memory(entry.name, models.count_parameters(config), placement)
    split, fit_idx, val_idx = three_way_split(dataset, opts)
    key = _artifact_key(method, identity, dataset, opts, placement)
    out = models_dir() / f"adapted-{models.safe_name(entry.name)}-{key[:12]}"
    if stored := _stored(out, entry.name, method):
        return stored
    if progress:
        progress(0, 1, "loading model")
    tokenizer = AutoTokenizer.from_pretrained(folder_in)
    _prepare_tokenizer(tokenizer, config)
    if kind == "encoder" and tokenizer.mask_token_id is None:
        raise ClinBenchError(f"{entry.name} has no [MASK] token, so masked-LM adaptation is not possible for it.")
    auto = AutoModelForMaskedLM if kind == "encoder" else AutoModelForCausalLM
    try:
        net, info = auto.from_pretrained(folder_in, config=config, dtype=torch.float32, output_loading_info=True)
    except (OSError, ValueError) as exc:
        raise ClinBenchError(f"{entry.name} cannot be loaded with a language-model head: {str(exc).splitlines()[0][:240]}") from None
    net.to(placement.device)
    head = sorted({k.rsplit(".", 1)[0] for k in info.get("missing_keys", [])})
    ids, n_truncated = features.tokenize(tokenizer, dataset.texts, opts["max_length"])
    seed = opts["seed"]
    if progress:
        progress(0, 1, "perplexity before")
    net.eval()
    ppl_before = perplexity(net, kind, ids, split.test, tokenizer, placement, seed=seed)
    from peft import get_peft_model

    for p in net.parameters():
        p.requires_grad_(False)
    tuned = get_peft_model(net, _lora_config(net, opts, "CAUSAL_LM" if kind == "decoder" else None, head))
    gen = torch.Generator().manual_seed(seed)

    def loss_fn(input_ids, mask, batch):
        inputs, labels = _lm_batch(kind, input_ids.cpu(), mask.cpu(), tokenizer, gen)
        return tuned(input_ids=inputs.to(placement.device), attention_mask=mask, labels=labels.to(placement.device)).loss

    def validate() -> dict:
        ppl = perplexity(tuned, kind, ids, val_idx, tokenizer, placement, seed=seed + 1)
        return {"val_perplexity": ppl, "score": -ppl}

    cfg = TrainConfig.from_options(method, opts)
    state = train(
        tuned,
        ids,
        fit_idx,
        loss_fn,
        validate,
        cfg,
        placement,
        pad_id=tokenizer.pad_token_id,
        key=key,
        progress=progress,
        should_stop=should_stop,
    )
    if progress:
        progress(0, 1, "perplexity after")
    ppl_after = perplexity(tuned, kind, ids, split.test, tokenizer, placement, seed=seed)
    name = f"{models.safe_name(entry.name)}-adapted-{key[:8]}"
    metrics = {
        "perplexity_before": ppl_before,
        "perplexity_after": ppl_after,
        "perplexity_on": "test split letters",
        "adapted_model": name,
        "head_from_checkpoint": not head,
    }
    manifest = {
        "kind": "domain-adaptation",
        "key": key,
        "name": name,
        "model": {**identity, "kind": kind, "model_type": config.model_type},
        "method": method,
        "method_title": METHOD_TITLES[method],
        "stage": "tuned",
        "config": {**opts, "train": cfg.__dict__},
        "objective": "masked LM" if kind == "encoder" else "causal LM",
        "data": data_manifest(dataset),
        "split": {**split_manifest(split), "n_fit": int(len(fit_idx)), "n_val": int(len(val_idx))},
        "training": {
            "curve": state["curve"],
            "best_epoch": state["best_epoch"],
            "epochs_run": state["epoch"],
            "steps": state["steps"],
            "train_tokens": state["tokens"],
            "head_modules": head,
            "n_truncated": n_truncated,
        },
        "placement": {"device": placement.device, "dtype": placement.dtype},
        "timings": {"train_s": state["train_s"], "total_s": time.perf_counter() - t_start},
        "versions": package_versions(),
        "metrics": metrics,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    with atomic_dir(out) as tmp:
        tuned.save_pretrained(tmp / "adapter")
        merged = tuned.merge_and_unload()
        merged.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        manifest = seal_artifact(tmp, manifest)
    checkpoint_path(key).unlink(missing_ok=True)
    if progress:
        progress(1, 1, "done")
    return StepResult(entry.name, method, metrics, str(out), False, manifest)
