"""The `linear-probe` step: a linear head trained on the frozen model's cached letter vectors.

The pretrained weights never change, so the backbone's output never changes either: every letter is embedded once
(engine.features.extract.embed with the run's pooling, max_length and windows: the same cached vectors the svc and logreg steps read, so
a run with both extracts once) and only the head is trained on those vectors, with the shared training loop
(engine.finetune.loop: AdamW, warm-up and decay, per-batch cancel, live curves, checkpoints). The head is one linear
layer on the pooled vector (softmax; multi-label: a sigmoid per label), not the model's own AutoModelForSequenceClassification
head: that head reads its own token (BERT: the pooler on [CLS]; decoders: the last token), which would need the backbone
run again per letter, and a linear layer on the pooled vector makes the stored classifier an ordinary `embedding-classifier`
(engine.classifiers embeds a new letter as the training letters were and applies `LinearHead.predict_proba`).

As before: for each fold of the plan a fresh head is trained on the fold's training letters, its epoch chosen on a
validation carve of them (macro-F1; multi-label: micro-F1, thresholds tuned per label on the carve), class-weighted
cross-entropy (multi-label: BCE with capped positive weights); under cv one more head is trained on every letter, the
stored classifier. Each training is seeded from the run seed and the fold and runs in float32 on the CPU, so it
reproduces to the bit.
"""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

import numpy as np

from engine.cache.estimator_files import save_estimator
from engine.features import extract
from engine.finetune import heads, loop
from engine.methods import lora
from engine.methods.base import Job, Method
from engine.models import catalog
from engine.models.devices import Placement
from engine.options.groups import Options, names

# In the cache key: a linear-probe artifact of ClinBench <= 0.2 trained the model's own head through the backbone
# (a sequence-classifier); this one is a linear layer on the cached vectors.
HEAD = "linear on cached embeddings, v1"
READS = (*names("protocol"), *names("embedding"), *names("finetune"), *names("decision"))
TRAIN_ON = Placement("cpu", "float32")  # a head on vectors: tiny, exact, and faster on the CPU than a copy to a GPU


def head_proba(weight, bias, X: np.ndarray, multi: bool) -> np.ndarray:
    """Probabilities of a linear head (`weight` labels x dim, `bias`) on the vectors `X`: softmax, or a sigmoid per label."""
    import torch

    with torch.inference_mode():
        logits = torch.from_numpy(np.ascontiguousarray(X, dtype=np.float32)) @ torch.as_tensor(weight).T + torch.as_tensor(bias)
        return (torch.sigmoid(logits) if multi else torch.softmax(logits, -1)).numpy()


class LinearHead:
    """A trained linear-probe head as a scikit-learn-like estimator on letter vectors: `classes_`, `predict_proba(X)`,
    `predict(X)`, and `thresholds_` (multi-label: each label's, tuned on the validation carve; else None)."""

    def __init__(self, classes: list[str], weight: np.ndarray, bias: np.ndarray, multi_label: bool, thresholds=None):
        self.classes_ = np.asarray(classes, dtype=object)
        self.coef_, self.intercept_ = np.asarray(weight, dtype=np.float32), np.asarray(bias, dtype=np.float32)
        self.multi_label = multi_label
        self.thresholds_ = None if thresholds is None else np.asarray(thresholds, dtype=float)

    def predict_proba(self, X) -> np.ndarray:
        return head_proba(self.coef_, self.intercept_, X, self.multi_label)

    def predict(self, X) -> np.ndarray:
        proba = self.predict_proba(X)
        if self.multi_label:
            return (proba >= (0.5 if self.thresholds_ is None else self.thresholds_)).astype(np.int8)
        return self.classes_[proba.argmax(1)]


def probe_key(identity: dict, data_hash: str, opts: Options, dtype: str, plan_hash: str, multi: bool = False) -> str:
    """The cache key of a linear-probe evaluation: a training's key (engine.finetune.loop) plus the plan, the head and how
    the vectors it reads were made (pooling; windows when above 1)."""
    e = opts.embedding
    read = {"pooling": e.pooling, **({"windows": e.windows} if e.windows > 1 else {})}
    extra = {"plan": plan_hash, "head": HEAD, **read, **({"loss": "bce"} if multi else {})}
    return loop.training_key("linear-probe", identity, data_hash, opts, dtype, extra=extra)


class Probe:
    """A linear head trained on one fold's training vectors (its validation letters carved from them)."""

    def __init__(self, job: Job, head: LinearHead, record: dict, val: np.ndarray):
        self.job, self.head, self.record, self.val = job, head, record, val

    def predict_proba(self, rows: np.ndarray) -> np.ndarray:
        return self.head.predict_proba(self.job.state["X"][rows])

    def decision_letters(self) -> tuple[np.ndarray, np.ndarray]:
        return self.val, self.predict_proba(self.val)


class LinearProbe(Method):
    name = "linear-probe"
    title = "linear head (before fine-tuning)"
    stage = "frozen"
    reads = READS
    predictor = "embedding-classifier"
    label_sets = True

    def setup(self, job: Job) -> None:
        entry = catalog.resolve(job.model)
        job.identity = {"name": entry.name}
        job.state["located"] = catalog.locate(entry)[1]

    def key(self, job: Job) -> str:
        job.state["key"] = probe_key(job.state["located"], job.dataset.data_hash, job.opts, job.placement.dtype, job.plan.hash, job.multi)
        return job.state["key"]

    def prepare(self, job: Job) -> None:
        import torch

        e = job.opts.embedding
        X, estats = extract.embed(
            job.model,
            job.dataset.texts,
            pooling=e.pooling,
            max_length=e.max_length,
            windows=e.windows,
            placement=job.placement,
            batch_tokens=e.batch_tokens,
            ctx=job.ctx,
        )
        X = np.array(X, dtype=np.float32)  # in memory, writable: torch reads it without a copy per batch
        y_all = job.y if job.multi else np.asarray([job.classes.index(str(v)) for v in job.dataset.labels])
        job.state.update(X=X, X_t=torch.from_numpy(X), estats=estats, y_all=y_all)
        job.state["y_t"] = torch.from_numpy(y_all.astype(np.float32) if job.multi else y_all)
        job.identity = {"name": job.identity["name"], **extract.read_meta(estats.key)["model"]}

    def fit(self, job: Job, train: np.ndarray, tag: str, label: str) -> Probe:
        """A fresh head trained on `train` (validation carved from it), seeded by (seed, tag)."""
        import torch

        ft, multi, n_out = job.opts.finetune.resolved(self.name), job.multi, len(job.classes)
        X, X_t, y_all, y_t = (job.state[k] for k in ("X", "X_t", "y_all", "y_t"))
        fit_idx, val_idx = job.carve(train)
        seed = loop.seed_of(job.opts.protocol.seed, tag)
        loop.seed_torch(seed)  # the head's initial weights (as transformers initialises a new head: N(0, 0.02), bias 0)
        net = torch.nn.Linear(X.shape[1], n_out)
        torch.nn.init.normal_(net.weight, std=0.02)
        torch.nn.init.zeros_(net.bias)
        weights = (
            heads.pos_weights(y_all[fit_idx], ft.class_weighted_loss)
            if multi
            else heads.class_weights(y_all[fit_idx], n_out, ft.class_weighted_loss)
        )

        def loss_fn(_ids, _mask, batch):
            logits = net(X_t[batch])
            if multi:
                return torch.nn.functional.binary_cross_entropy_with_logits(logits, y_t[batch], pos_weight=weights)
            return torch.nn.functional.cross_entropy(logits, y_t[batch], weight=weights)

        def validate() -> dict:
            proba = head_proba(net.weight.detach(), net.bias.detach(), X[val_idx], multi)
            return heads.validation(proba, y_all[val_idx], n_out, multi)

        key = f"{job.state['key']}-{tag}"
        state = loop.train(net, None, fit_idx, loss_fn, validate, ft, seed, TRAIN_ON, pad_id=0, key=key, ctx=job.fold_context(label))
        training = loop.training_manifest(
            state,
            trainable_params=int(sum(q.numel() for q in net.parameters())),
            head_modules=["linear"],
            target_modules=None,
            n_truncated=job.state["estats"].n_truncated,
        )
        head = LinearHead(job.classes, net.weight.detach().numpy().copy(), net.bias.detach().numpy().copy(), multi)
        record = {
            "training": training,
            "state": state,
            "n_fit": int(len(fit_idx)),
            "n_val": int(len(val_idx)),
            "val_index": val_idx.tolist(),
            "tag": tag,
        }
        if multi:
            record["pos_weight"] = None if weights is None else weights.tolist()
        return Probe(job, head, record, val_idx)

    def save(self, job: Job, final: Probe, folder: Path) -> None:
        save_estimator(folder, final.head)

    def record(self, job: Job, final: Probe, fits: list[Probe]) -> dict:
        e, estats = job.opts.embedding, job.state["estats"]
        trainings = {} if job.plan.name != "cv" else {f.record["tag"]: f.record for f in fits}
        out = {
            "embedder": {"pooling": e.pooling, "max_length": e.max_length, "windows": e.windows},
            "head": HEAD,
            "config": {**job.opts.to_dict(), "train": loop.train_config(job.opts.finetune.resolved(self.name), job.opts.protocol.seed)},
            **loop.folds_manifest(job.plan.name, final.record, trainings),  # refit, training, fold_trainings
            "embeddings": asdict(estats),
            "placement": {"device": job.placement.device, "dtype": job.placement.dtype, "head": f"{TRAIN_ON.device}, {TRAIN_ON.dtype}"},
            "timings": {
                "embed_s": estats.seconds,
                "embed_cache_hit": estats.cache_hit,
                "train_s": sum(f.record["state"]["train_s"] for f in (fits if final in fits else [final, *fits])),
            },
        }
        if job.multi:
            out["loss"] = {
                "name": "bce",
                "pos_weight": lora.by_label(job.classes, final.record["pos_weight"]),
                "pos_weight_cap": heads.POS_WEIGHT_CAP,
            }
        return out

    def finish(self, job: Job, fits: list[Probe]) -> None:
        loop.discard_staging(
            job.state["key"], loop.checkpoint_path(job.state["key"]).with_suffix(".folds"), [f.record["tag"] for f in fits]
        )


METHOD = LinearProbe()
