"""The `linear-probe` and `lora` steps: the model itself as the classifier.

* `linear-probe`: the pretrained weights frozen, only the new head trained (before any fine-tuning);
* `lora`: LoRA adapters on the attention projections trained together with the head (the head learns at
  HEAD_LR_FACTOR x the rate); the adapter is saved in peft's format.
Trained on the fitting split, the epoch chosen on the validation split (macro-F1), the test split scored
once; class-weighted cross-entropy by default.
"""

from __future__ import annotations

import time

import numpy as np

from engine import artifacts, features, metrics, protocols
from engine.artifacts import StepResult
from engine.config import package_versions
from engine.context import StepContext, StepKind, ensure
from engine.data import Dataset, require_single_label
from engine.devices import choose
from engine.finetune import loop
from engine.finetune.loading import load_classifier_model, prepare_trainable
from engine.models import locate, resolve
from engine.options import Options, names
from engine.storage import evaluations_dir

# A new head starts from random weights and must move far; LoRA adapters start at zero and need small
# steps. So under LoRA the head learns at HEAD_LR_FACTOR x the learning rate (cf. LoRA+).
HEAD_LR_FACTOR = 10.0
READS = ("seed", "test_size", "n_boot", "max_length", *names("finetune"))


def class_weights(y: np.ndarray, n_classes: int, enabled: bool):
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
    with torch.inference_mode(), loop.autocast(placement):
        for batch in loop.length_grouped_batches(lengths, np.asarray(idx), batch_size, None):
            input_ids, mask = loop.collate(ids, batch, pad_id, placement.device)
            logits = net(input_ids=input_ids, attention_mask=mask).logits.float()
            out[[pos[int(i)] for i in batch]] = torch.softmax(logits, -1).cpu().numpy()
    return out


def classifier_step(dataset: Dataset, model: str, method: str, opts: Options, ctx: StepContext | None = None) -> StepResult:
    """`linear-probe` or `lora`: train on the fitting split, pick the epoch on validation, score the test split once."""
    import torch
    from sklearn.metrics import f1_score

    ctx = ensure(ctx)
    if method not in KINDS:
        raise ValueError(f"classifier_step runs linear-probe or lora, not {method!r}.")
    require_single_label(dataset)
    t_start = time.perf_counter()
    placement = choose()
    classes = dataset.classes
    p = opts.protocol
    split, fit_idx, val_idx = protocols.three_way_split(dataset, p.test_size, p.seed, opts.finetune.val_size)
    entry = resolve(model)
    key = loop.training_key(method, locate(entry)[1], dataset.data_hash, opts, placement.dtype)
    folder = evaluations_dir() / key
    if hit := artifacts.stored(folder, entry.name, method):
        return hit
    ctx.progress(0, 1, "loading model")
    net, tokenizer, identity, kind, head = load_classifier_model(model, classes, placement)
    ft = opts.finetune.resolved(method)
    trained, targets = prepare_trainable(net, method, head, ft)
    n_trainable = sum(p.numel() for p in trained.parameters() if p.requires_grad)
    ctx.progress(0, len(dataset), "tokenising")
    ids, n_truncated = features.tokenize(tokenizer, dataset.texts, opts.embedding.max_length)
    y_all = np.asarray([classes.index(str(v)) for v in dataset.labels])
    weights = class_weights(y_all[fit_idx], len(classes), ft.class_weighted_loss)
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
        f1 = float(f1_score(y_val, proba.argmax(1), average="macro", labels=list(range(len(classes))), zero_division=0))
        return {"val_macro_f1": f1, "val_loss": loss, "score": f1 - 1e-6 * loss}

    state = loop.train(
        trained,
        ids,
        fit_idx,
        loss_fn,
        validate,
        ft,
        p.seed,
        placement,
        pad_id=pad_id,
        key=key,
        ctx=ctx,
        head_lr_factor=HEAD_LR_FACTOR if method == "lora" else 1.0,
        is_head=lambda name: "modules_to_save" in name,
    )
    ctx.progress(0, 1, "scoring the test split")
    t_pred = time.perf_counter()
    proba = predict_proba(trained, ids, split.test, pad_id, placement)
    predict_s = time.perf_counter() - t_pred
    y_true = np.asarray(classes)[y_all[split.test]]
    y_pred = np.asarray(classes)[proba.argmax(1)]
    m = metrics.metrics(y_true, y_pred, n_boot=p.n_boot, seed=p.seed)
    m["baseline"] = metrics.majority_baseline(np.asarray(classes)[y_all[split.train]], y_true)
    manifest = {
        "kind": "evaluation",
        "key": key,
        "model": {**identity, "kind": kind},
        "method": method,
        "method_title": KINDS[method].title,
        "stage": KINDS[method].stage,
        "predictor": "sequence-classifier",
        "config": {**opts.to_dict(), "train": loop.train_config(ft, p.seed)},
        "data": artifacts.data_manifest(dataset),
        "split": {**artifacts.split_manifest(split), "n_fit": int(len(fit_idx)), "n_val": int(len(val_idx)), "val_index": val_idx.tolist()},
        "training": loop.training_manifest(
            state, trainable_params=int(n_trainable), head_modules=head, target_modules=targets, n_truncated=n_truncated
        ),
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

    def write_files(tmp):
        if method == "lora":
            trained.save_pretrained(tmp / "adapter")
        else:
            from safetensors.torch import save_file

            save_file({n: p.detach().contiguous() for n, p in trained.named_parameters() if p.requires_grad}, tmp / "head.safetensors")
        artifacts.write_predictions(tmp, split.test, y_true, y_pred, classes, "probability", proba)

    manifest = artifacts.write(folder, manifest, write_files)
    loop.checkpoint_path(key).unlink(missing_ok=True)
    ctx.progress(1, 1, "done")
    return StepResult(identity["name"], method, m, str(folder), False, manifest)


LINEAR_PROBE = StepKind("linear-probe", "linear head (before fine-tuning)", "frozen", classifier_step, READS)
LORA = StepKind("lora", "LoRA fine-tuning", "tuned", classifier_step, READS)
KINDS = {k.name: k for k in (LINEAR_PROBE, LORA)}
