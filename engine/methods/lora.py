"""The `lora` step: the model itself as the classifier, and the helpers the linear probe shares with it.

* `lora`: LoRA adapters on the attention projections trained together with the head (the head learns at
  HEAD_LR_FACTOR x the rate); the adapter is saved in peft's format.
* `linear-probe` (the pretrained weights frozen, only a head trained) is engine.finetune.probe: a head on the cached
  letter vectors. Probe artifacts of ClinBench <= 0.2 (the model's own head on the backbone, head.safetensors) still
  load as sequence classifiers (engine.finetune.loading.load_tuned_classifier).
For each fold of the plan (engine.protocols) a fresh model is trained on the fold's training letters, its
epoch chosen on a validation carve of them (macro-F1; multi-label: micro-F1), and the fold's test letters scored once;
under cv one more model is trained on every letter (its own validation carve): the stored classifier. Each
training is seeded from the run seed and the fold, so a configuration reproduces to the bit on a CPU.
Class-weighted cross-entropy by default.

Multi-label data: one sigmoid per label (problem_type multi_label_classification), trained with BCE-with-logits against
the 0/1 label matrix, each label's positives weighted by negatives/positives of the fitting letters (capped at
POS_WEIGHT_CAP; when class_weighted_loss is on). After training, each label's decision threshold is the best-F1 one on
the validation carve's probabilities (never the test letters'); the fold's test predictions use them, and the stored
classifier's are in the manifest (`classifier.thresholds`, label -> threshold), which engine.classifiers reads.
"""

from __future__ import annotations

import shutil
import time

import numpy as np

from engine.cache import artifacts
from engine.cache.artifacts import StepResult
from engine.cache.context import StepContext, ensure
from engine.cache.storage import atomic_dir, evaluations_dir
from engine.data.dataset import Dataset
from engine.data.labels import indicator
from engine.evaluation import scoring
from engine.features import extract
from engine.finetune import loop
from engine.finetune.loading import MULTI_LABEL, is_multi_label, load_classifier_model, lora_manifest, prepare_trainable
from engine.methods import estimators
from engine.methods.base import StepKind
from engine.models.catalog import locate, resolve
from engine.models.devices import choose
from engine.options.groups import Options, names
from engine.protocols import plans

# A new head starts from random weights and must move far; LoRA adapters start at zero and need small
# steps. So under LoRA the head learns at HEAD_LR_FACTOR x the learning rate (cf. LoRA+).
HEAD_LR_FACTOR = 10.0
READS = (*names("protocol"), "max_length", *names("finetune"))
# Multi-label: a label's positives weigh negatives/positives in the BCE, at most this much (a rare label's few positives
# would otherwise dominate the gradient) and at least its inverse.
POS_WEIGHT_CAP = 10.0
THRESHOLD_RULE = "best F1 per label on the validation carve's probabilities"


def class_weights(y: np.ndarray, n_classes: int, enabled: bool):
    import torch

    if not enabled:
        return None
    counts = np.bincount(y, minlength=n_classes).astype(float)
    w = len(y) / (n_classes * np.maximum(counts, 1))
    return torch.tensor(w, dtype=torch.float32)


def pos_weights(Y: np.ndarray, enabled: bool):
    """BCE's weight of each label's positives (`Y`: the fitting letters' 0/1 matrix): negatives/positives, within
    [1/POS_WEIGHT_CAP, POS_WEIGHT_CAP]; None when class weighting is off."""
    import torch

    if not enabled:
        return None
    pos = Y.sum(0).astype(float)
    w = np.clip((len(Y) - pos) / np.maximum(pos, 1), 1 / POS_WEIGHT_CAP, POS_WEIGHT_CAP)
    return torch.tensor(w, dtype=torch.float32)


def tune_thresholds(proba: np.ndarray, Y: np.ndarray) -> np.ndarray:
    """One decision threshold per label: the best F1 on these (validation) probabilities (estimators.best_threshold)."""
    return np.array([estimators.best_threshold(proba[:, j], Y[:, j]) for j in range(Y.shape[1])], dtype=float)


def multilabel_validation(proba: np.ndarray, Y: np.ndarray) -> dict:
    """The validation figures of a multi-label epoch: micro-F1 at thresholds tuned on these letters (what the epoch's
    model would predict once its thresholds are tuned) and the mean (unweighted) BCE."""
    from sklearn.metrics import f1_score

    P = (proba >= tune_thresholds(proba, Y)).astype(np.int8)
    f1 = float(f1_score(Y, P, average="micro", zero_division=0))
    p = np.clip(proba.astype(np.float64), 1e-12, 1 - 1e-12)  # (float32 would round 1 - 1e-12 to 1: log(0))
    loss = float(-np.mean(Y * np.log(p) + (1 - Y) * np.log(1 - p)))
    return {"val_micro_f1": f1, "val_loss": loss, "score": f1 - 1e-6 * loss}


def predict_proba(net, ids: list[np.ndarray], idx, pad_id: int, placement, batch_size: int = 16) -> np.ndarray:
    """Softmax probabilities for the letters `idx`, in that order; a multi-label head's: each label's sigmoid."""
    import torch

    squash = torch.sigmoid if is_multi_label(net.config) else (lambda logits: torch.softmax(logits, -1))
    lengths = [len(x) for x in ids]
    out = np.zeros((len(idx), net.config.num_labels), dtype=np.float32)
    pos = {int(i): r for r, i in enumerate(idx)}
    with torch.inference_mode(), loop.autocast(placement):
        for batch in loop.length_grouped_batches(lengths, np.asarray(idx), batch_size, None):
            input_ids, mask = loop.collate(ids, batch, pad_id, placement.device)
            logits = net(input_ids=input_ids, attention_mask=mask).logits.float()
            out[[pos[int(i)] for i in batch]] = squash(logits).cpu().numpy()
    return out


def fold_context(ctx: StepContext, label: str) -> StepContext:
    """The step's context for one training among several: progress lines and curve names carry `label` (e.g. 'fold 2/5')."""
    if not label:
        return ctx
    return StepContext(
        progress=lambda done, total, unit: ctx.progress(done, total, f"{label}: {unit}"),
        should_stop=ctx.should_stop,
        log_metric=lambda name, value, step: ctx.log_metric(f"{name} · {label}", value, step),
        logger=ctx.logger,
    )


def classifier_step(dataset: Dataset, model: str, method: str, opts: Options, ctx: StepContext | None = None) -> StepResult:
    """`lora`: for each fold of the plan, train on its training letters (the epoch picked on a validation
    carve of them) and score its test letters; under cv, train once more on every letter for the stored classifier."""
    import torch
    from sklearn.metrics import f1_score

    ctx = ensure(ctx)
    if method not in KINDS:
        raise ValueError(f"classifier_step runs lora, not {method!r} (linear-probe: engine.finetune.probe).")
    multi = dataset.multi_label
    t_start = time.perf_counter()
    placement = choose()
    classes = dataset.classes
    p = opts.protocol
    plan = plans.plan(dataset, p, method)
    entry = resolve(model)
    scoring.require_unseen(entry, dataset, plan)
    extra = {"plan": plan.hash, **({"loss": "bce"} if multi else {})}
    key = loop.training_key(method, locate(entry)[1], dataset.data_hash, opts, placement.dtype, extra=extra)
    folder = evaluations_dir() / key
    if hit := artifacts.stored(folder, entry.name, method):
        return hit
    ft = opts.finetune.resolved(method)
    staging = loop.checkpoint_path(key).with_suffix(".folds")
    if multi:  # letters x labels, 0/1
        y_all = indicator(dataset.labels, classes)
        y_t = torch.from_numpy(y_all.astype(np.float32))
    else:
        y_all = np.asarray([classes.index(str(v)) for v in dataset.labels])
        y_t = torch.from_numpy(y_all)
    tokens: dict = {}

    def train_on(train_idx: np.ndarray, tag: str, label: str) -> dict:
        """Train a fresh model on `train_idx` (validation carved from it), seeded by (seed, tag); save it under staging/tag."""
        fctx = fold_context(ctx, label)
        fit_idx, val_idx = plans.carve(dataset, train_idx, plan.groups, ft.val_size, p.seed)
        seed = loop.seed_of(p.seed, tag)
        loop.seed_torch(seed)  # the head's and the adapters' initial weights
        fctx.progress(0, 1, "loading model")
        net, tokenizer, identity, kind, head = load_classifier_model(model, classes, placement, multi)
        trained, _targets = prepare_trainable(net, method, head, ft)
        if not tokens:
            fctx.progress(0, len(dataset), "tokenising")
            tokens["ids"], tokens["n_truncated"] = extract.tokenize(tokenizer, dataset.texts, opts.embedding.max_length)
        ids, pad_id = tokens["ids"], tokenizer.pad_token_id
        if multi:
            weights = pos_weights(y_all[fit_idx], ft.class_weighted_loss)
        else:
            weights = class_weights(y_all[fit_idx], len(classes), ft.class_weighted_loss)

        def loss_fn(input_ids, mask, batch):
            logits = trained(input_ids=input_ids, attention_mask=mask).logits.float()
            w = weights.to(logits.device) if weights is not None else None
            if multi:
                return torch.nn.functional.binary_cross_entropy_with_logits(logits, y_t[batch].to(logits.device), pos_weight=w)
            return torch.nn.functional.cross_entropy(logits, y_t[batch].to(logits.device), weight=w)

        def validate() -> dict:
            proba = predict_proba(trained, ids, val_idx, pad_id, placement)
            y_val = y_all[val_idx]
            if multi:
                return multilabel_validation(proba, y_val)
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
            seed,
            placement,
            pad_id=pad_id,
            key=f"{key}-{tag}",
            ctx=fctx,
            head_lr_factor=HEAD_LR_FACTOR if method == "lora" else 1.0,
            is_head=lambda name: "modules_to_save" in name,
        )
        n_trainable = sum(p.numel() for p in trained.parameters() if p.requires_grad)
        training = loop.training_manifest(
            state, trainable_params=int(n_trainable), head_modules=head, n_truncated=tokens["n_truncated"], **lora_manifest(trained)
        )
        out = {
            "net": trained,
            "pad_id": pad_id,
            "identity": identity,
            "kind": kind,
            "training": training,
            "state": state,
            "n_fit": int(len(fit_idx)),
            "n_val": int(len(val_idx)),
            "val_index": val_idx.tolist(),
        }
        if multi:  # the best epoch's thresholds, tuned on the validation carve (never on test letters)
            out["thresholds"] = tune_thresholds(predict_proba(trained, ids, val_idx, pad_id, placement), y_all[val_idx])
            out["pos_weight"] = None if weights is None else weights.tolist()
        return out

    trainings: dict[str, dict] = {}

    def fit_predict(fold):
        tag = f"r{fold.repeat}f{fold.fold}"
        run = trainings[tag] = train_on(fold.train, tag, scoring.fold_label(plan, fold))
        proba = predict_proba(run["net"], tokens["ids"], fold.test, run["pad_id"], placement)
        save_trained(run["net"], method, staging / tag)  # the fold's model, for lora-svc's fold embeddings
        del run["net"]
        if multi:  # each label's own probability, and the labels at or above the fold's thresholds
            return proba, (proba >= run["thresholds"]).astype(np.int8)
        return proba

    oof = scoring.cross_predict(plan, fit_predict, len(classes), ctx)
    m = scoring.score(dataset, plan, oof, n_boot=p.n_boot, seed=p.seed)
    if plan.name == "cv":
        ctx.check_stop("Cancelled before training on every letter.")
        final = train_on(plan.final_train, "all", "all letters")
        save_trained(final.pop("net"), method, staging / "all")
    else:
        final = trainings.pop("r0f0")
    manifest = {
        "kind": "evaluation",
        "key": key,
        "model": {**final["identity"], "kind": final["kind"]},
        "method": method,
        "method_title": KINDS[method].title,
        "stage": KINDS[method].stage,
        "predictor": "sequence-classifier",
        "config": {**opts.to_dict(), "train": loop.train_config(ft, p.seed)},
        "data": artifacts.data_manifest(dataset),
        "protocol": plan.manifest(),
        **loop.folds_manifest(plan.name, final, trainings),  # refit, training, fold_trainings
        "placement": {
            "device": placement.device,
            "dtype": placement.dtype,
            "weights": "float32",
            "autocast": placement.dtype if placement.dtype == "bfloat16" else None,
        },
        "timings": {
            "train_s": final["state"]["train_s"] + sum(t["state"]["train_s"] for t in trainings.values()),
            "total_s": time.perf_counter() - t_start,
        },
        **artifacts.provenance(m),  # versions, environment, metrics, created
        **(multilabel_manifest(classes, final, trainings) if multi else {}),
    }

    def write_files(tmp):
        final_dir = staging / ("all" if plan.name == "cv" else "r0f0")
        for item in final_dir.iterdir():  # the stored classifier at the artifact's root
            shutil.move(str(item), tmp / item.name)
        if plan.name == "cv" and method == "lora":  # each fold's adapter, for lora-svc
            for tag in trainings:
                shutil.move(str(staging / tag), tmp / "folds" / tag)
        scoring.write_predictions(tmp, dataset, plan, oof)

    (folder.parent).mkdir(parents=True, exist_ok=True)
    manifest = artifacts.write(folder, manifest, write_files)
    loop.discard_staging(key, staging, trainings)
    ctx.progress(1, 1, "done")
    return StepResult(final["identity"]["name"], method, m, str(folder), False, manifest)


def multilabel_manifest(classes: list[str], final: dict, trainings: dict[str, dict]) -> dict:
    """What a multi-label step's manifest adds: the loss, and the stored classifier's thresholds (label -> threshold, full
    precision: engine.classifiers applies them) with each fold's."""

    def by_label(values):
        return None if values is None else {c: float(v) for c, v in zip(classes, values, strict=True)}

    return {
        "loss": {"name": "bce", "pos_weight": by_label(final["pos_weight"]), "pos_weight_cap": POS_WEIGHT_CAP},
        "classifier": {
            "problem_type": MULTI_LABEL,
            "thresholds": by_label(final["thresholds"]),
            "threshold_rule": THRESHOLD_RULE,
            "fold_thresholds": {tag: by_label(t["thresholds"]) for tag, t in trainings.items()},
        },
    }


def save_trained(net, method: str, out) -> None:
    """A trained classifier's own weights: the LoRA adapter (peft's format, with the head) or the probe's head. Written
    to a temporary folder renamed when complete, so a full disk (DiskFull) or a crash leaves no half-written weights."""
    with atomic_dir(out) as tmp:
        if method == "lora":
            net.save_pretrained(tmp / "adapter")
        else:
            from safetensors.torch import save_file

            save_file({n: p.detach().contiguous() for n, p in net.named_parameters() if p.requires_grad}, tmp / "head.safetensors")


LORA = StepKind("lora", "LoRA fine-tuning", "tuned", classifier_step, READS, label_sets=True)
KINDS = {k.name: k for k in (LORA,)}
