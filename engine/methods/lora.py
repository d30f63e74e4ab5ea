"""The `lora` method: LoRA adapters and a new classification head trained together, the tuned model as the classifier.

On each fold's training letters (the harness's fold loop, engine.methods.harness) a fresh model is loaded
(AutoModelForSequenceClassification: the pretrained weights with a new head), LoRA adapters are put on its target
modules (engine.finetune.loading) and trained with the head (the head at HEAD_LR_FACTOR x the rate, cf. LoRA+) by the
shared loop (engine.finetune.loop: seeded from the run seed and the fold, so a configuration reproduces to the bit on a
CPU), its epoch chosen on a validation carve of those letters (macro-F1; label sets: micro-F1). Class-weighted
cross-entropy by default; label sets: one sigmoid per label with BCE, each label's positives weighted
(engine.finetune.heads). The carve's probabilities are also what the harness chooses a threshold on (two labels, label
sets). Each fold's adapter is kept (folds/<tag>/adapter) for lora-svc; the stored classifier's adapter (peft's format,
with the head) sits at the artifact's root (predictor `sequence-classifier`).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np

from engine.cache.storage import atomic_dir
from engine.features import extract
from engine.finetune import heads, loop
from engine.finetune.loading import MULTI_LABEL, load_classifier_model, lora_manifest, prepare_trainable
from engine.methods.base import Job, Method
from engine.models import catalog
from engine.options.groups import names

# A new head starts from random weights and must move far; LoRA adapters start at zero and need small
# steps. So under LoRA the head learns at HEAD_LR_FACTOR x the learning rate (cf. LoRA+).
HEAD_LR_FACTOR = 10.0
READS = (*names("protocol"), "max_length", *names("finetune"), *names("decision"))


class Tuned:
    """A model trained on one fold's training letters (its validation letters carved from them)."""

    def __init__(self, job: Job, net, tag: str, record: dict, val: np.ndarray):
        self.job, self.net, self.tag, self.record, self.val = job, net, tag, record, val
        self._val_proba: np.ndarray | None = None

    def predict_proba(self, rows: np.ndarray) -> np.ndarray:
        return heads.sequence_proba(self.net, self.job.state["ids"], rows, self.record["pad_id"], self.job.placement)

    def decision_letters(self) -> tuple[np.ndarray, np.ndarray]:
        if self._val_proba is None:
            self._val_proba = self.predict_proba(self.val)
        return self.val, self._val_proba


def staging(job: Job) -> Path:
    return loop.checkpoint_path(job.state["key"]).with_suffix(".folds")


def save_trained(net, out: Path) -> None:
    """A trained model's LoRA adapter (peft's format, with the head), written to a temporary folder renamed when
    complete, so a full disk (DiskFull) or a crash leaves no half-written weights."""
    with atomic_dir(out) as tmp:
        net.save_pretrained(tmp / "adapter")


class Lora(Method):
    name = "lora"
    title = "LoRA fine-tuning"
    stage = "tuned"
    reads = READS
    predictor = "sequence-classifier"
    label_sets = True

    def setup(self, job: Job) -> None:
        entry = catalog.resolve(job.model)
        job.identity = {"name": entry.name}
        job.state["located"] = catalog.locate(entry)[1]

    def key(self, job: Job) -> str:
        extra = {"plan": job.plan.hash, **({"loss": "bce"} if job.multi else {})}
        job.state["key"] = loop.training_key(
            self.name, job.state["located"], job.dataset.data_hash, job.opts, job.placement.dtype, extra=extra
        )
        return job.state["key"]

    def prepare(self, job: Job) -> None:
        classes = job.classes
        if job.multi:  # letters x labels, 0/1
            job.state["targets"] = job.y
        else:
            job.state["targets"] = np.asarray([classes.index(str(v)) for v in job.dataset.labels])

    def fit(self, job: Job, train: np.ndarray, tag: str, label: str) -> Tuned:
        import torch

        ft, seed0 = job.opts.finetune.resolved(self.name), job.opts.protocol.seed
        fctx = job.fold_context(label)
        fit_idx, val_idx = job.carve(train)
        y_all = job.state["targets"]
        y_t = torch.from_numpy(y_all.astype(np.float32) if job.multi else y_all)
        seed = loop.seed_of(seed0, tag)
        loop.seed_torch(seed)  # the head's and the adapters' initial weights
        fctx.progress(0, 1, "loading model")
        net, tokenizer, identity, kind, head = load_classifier_model(job.model, job.classes, job.placement, job.multi)
        trained, _targets = prepare_trainable(net, self.name, head, ft)
        if "ids" not in job.state:
            fctx.progress(0, len(job.dataset), "tokenising")
            job.state["ids"], job.state["n_truncated"] = extract.tokenize(tokenizer, job.dataset.texts, job.opts.embedding.max_length)
        ids, pad_id = job.state["ids"], tokenizer.pad_token_id
        if job.multi:
            weights = heads.pos_weights(y_all[fit_idx], ft.class_weighted_loss)
        else:
            weights = heads.class_weights(y_all[fit_idx], len(job.classes), ft.class_weighted_loss)

        def loss_fn(input_ids, mask, batch):
            logits = trained(input_ids=input_ids, attention_mask=mask).logits.float()
            w = weights.to(logits.device) if weights is not None else None
            if job.multi:
                return torch.nn.functional.binary_cross_entropy_with_logits(logits, y_t[batch].to(logits.device), pos_weight=w)
            return torch.nn.functional.cross_entropy(logits, y_t[batch].to(logits.device), weight=w)

        def validate() -> dict:
            proba = heads.sequence_proba(trained, ids, val_idx, pad_id, job.placement)
            return heads.validation(proba, y_all[val_idx], len(job.classes), job.multi)

        state = loop.train(
            trained,
            ids,
            fit_idx,
            loss_fn,
            validate,
            ft,
            seed,
            job.placement,
            pad_id=pad_id,
            key=f"{job.state['key']}-{tag}",
            ctx=fctx,
            head_lr_factor=HEAD_LR_FACTOR,
            is_head=lambda name: "modules_to_save" in name,
        )
        n_trainable = sum(p.numel() for p in trained.parameters() if p.requires_grad)
        training = loop.training_manifest(
            state, trainable_params=int(n_trainable), head_modules=head, n_truncated=job.state["n_truncated"], **lora_manifest(trained)
        )
        job.identity = {**identity, "kind": kind}
        record = {
            "pad_id": pad_id,
            "training": training,
            "state": state,
            "n_fit": int(len(fit_idx)),
            "n_val": int(len(val_idx)),
            "val_index": val_idx.tolist(),
            "pos_weight": None if weights is None or not job.multi else weights.tolist(),
        }
        return Tuned(job, trained, tag, record, val_idx)

    def fold_done(self, job: Job, fitted: Tuned, tag: str) -> None:
        """The fold's adapter is staged (lora-svc embeds with it) and the model freed."""
        save_trained(fitted.net, staging(job) / tag)
        fitted.net = None

    def save(self, job: Job, final: Tuned, folder: Path) -> None:
        if final.net is not None:  # the refit on every letter (cv): not staged as a fold
            save_trained(final.net, staging(job) / final.tag)
        for item in (staging(job) / final.tag).iterdir():  # the stored classifier at the artifact's root
            shutil.move(str(item), folder / item.name)
        if job.plan.name == "cv":  # each fold's adapter, for lora-svc
            for tag in fold_tags(job):
                shutil.move(str(staging(job) / tag), folder / "folds" / tag)

    def record(self, job: Job, final: Tuned, fits: list[Tuned]) -> dict:
        trainings = {} if job.plan.name != "cv" else {f.tag: f.record for f in fits}
        out = {
            "model": job.identity,
            "config": {**job.opts.to_dict(), "train": loop.train_config(job.opts.finetune.resolved(self.name), job.opts.protocol.seed)},
            **loop.folds_manifest(job.plan.name, final.record, trainings),  # refit, training, fold_trainings
            "placement": {
                "device": job.placement.device,
                "dtype": job.placement.dtype,
                "weights": "float32",
                "autocast": job.placement.dtype if job.placement.dtype == "bfloat16" else None,
            },
            "timings": {"train_s": sum(f.record["state"]["train_s"] for f in (fits if final in fits else [final, *fits]))},
        }
        if job.multi:
            out["loss"] = {
                "name": "bce",
                "pos_weight": by_label(job.classes, final.record["pos_weight"]),
                "pos_weight_cap": heads.POS_WEIGHT_CAP,
            }
            out["classifier"] = {"problem_type": MULTI_LABEL}
        return out

    def finish(self, job: Job, fits: list[Tuned]) -> None:
        loop.discard_staging(job.state["key"], staging(job), [f.tag for f in fits])


def fold_tags(job: Job) -> list[str]:
    return [f"r{f.repeat}f{f.fold}" for f in job.plan.folds]


def by_label(classes: list[str], values) -> dict | None:
    return None if values is None else {c: float(v) for c, v in zip(classes, values, strict=True)}


METHOD = Lora()
