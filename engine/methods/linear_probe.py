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

import time
from dataclasses import asdict

import numpy as np

from engine.cache import artifacts
from engine.cache.artifacts import StepResult
from engine.cache.context import StepContext, ensure
from engine.cache.storage import evaluations_dir
from engine.data.dataset import Dataset
from engine.data.labels import indicator
from engine.evaluation import scoring
from engine.features import extract
from engine.finetune import loop
from engine.methods.base import StepKind
from engine.methods.lora import class_weights, fold_context, multilabel_manifest, multilabel_validation, pos_weights, tune_thresholds
from engine.models.catalog import locate, resolve
from engine.models.devices import Placement, choose
from engine.options.groups import Options, names
from engine.protocols import plans

# In the cache key: a linear-probe artifact of ClinBench <= 0.2 trained the model's own head through the backbone
# (a sequence-classifier); this one is a linear layer on the cached vectors.
HEAD = "linear on cached embeddings, v1"
READS = (*names("protocol"), *names("embedding"), *names("finetune"))
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


def probe_step(dataset: Dataset, model: str, method: str, opts: Options, ctx: StepContext | None = None) -> StepResult:
    """Embed every letter once (cached), then train a linear head on each fold's training vectors and score its test
    letters; under cv, train once more on every letter for the stored classifier."""
    import torch
    from sklearn.metrics import f1_score

    ctx = ensure(ctx)
    multi, classes, p, e = dataset.multi_label, dataset.classes, opts.protocol, opts.embedding
    t_start = time.perf_counter()
    placement = choose()
    plan = plans.plan(dataset, p, method)
    entry = resolve(model)
    scoring.require_unseen(entry, dataset, plan)
    key = probe_key(locate(entry)[1], dataset.data_hash, opts, placement.dtype, plan.hash, multi)
    folder = evaluations_dir() / key
    if hit := artifacts.stored(folder, entry.name, method):
        return hit
    X, estats = extract.embed(
        model,
        dataset.texts,
        pooling=e.pooling,
        max_length=e.max_length,
        windows=e.windows,
        placement=placement,
        batch_tokens=e.batch_tokens,
        ctx=ctx,
    )
    X = np.array(X, dtype=np.float32)  # in memory, writable: torch reads it without a copy per batch
    X_t = torch.from_numpy(X)
    identity = {"name": entry.name, **extract.read_meta(estats.key)["model"]}
    ft = opts.finetune.resolved(method)
    y_all = indicator(dataset.labels, classes) if multi else np.asarray([classes.index(str(v)) for v in dataset.labels])
    y_t = torch.from_numpy(y_all.astype(np.float32) if multi else y_all)
    n_out = len(classes)

    def train_on(train_idx: np.ndarray, tag: str, label: str) -> dict:
        """Train a fresh head on `train_idx` (validation carved from it), seeded by (seed, tag)."""
        fit_idx, val_idx = plans.carve(dataset, train_idx, plan.groups, ft.val_size, p.seed)
        seed = loop.seed_of(p.seed, tag)
        loop.seed_torch(seed)  # the head's initial weights (as transformers initialises a new head: N(0, 0.02), bias 0)
        net = torch.nn.Linear(X.shape[1], n_out)
        torch.nn.init.normal_(net.weight, std=0.02)
        torch.nn.init.zeros_(net.bias)
        if multi:
            weights = pos_weights(y_all[fit_idx], ft.class_weighted_loss)
        else:
            weights = class_weights(y_all[fit_idx], n_out, ft.class_weighted_loss)

        def loss_fn(_ids, _mask, batch):
            logits = net(X_t[batch])
            if multi:
                return torch.nn.functional.binary_cross_entropy_with_logits(logits, y_t[batch], pos_weight=weights)
            return torch.nn.functional.cross_entropy(logits, y_t[batch], weight=weights)

        def val_proba() -> np.ndarray:
            return head_proba(net.weight.detach(), net.bias.detach(), X[val_idx], multi)

        def validate() -> dict:
            proba, y_val = val_proba(), y_all[val_idx]
            if multi:
                return multilabel_validation(proba, y_val)
            loss = float(-np.mean(np.log(np.clip(proba[np.arange(len(val_idx)), y_val], 1e-12, None))))
            f1 = float(f1_score(y_val, proba.argmax(1), average="macro", labels=list(range(n_out)), zero_division=0))
            return {"val_macro_f1": f1, "val_loss": loss, "score": f1 - 1e-6 * loss}

        state = loop.train(
            net, None, fit_idx, loss_fn, validate, ft, seed, TRAIN_ON, pad_id=0, key=f"{key}-{tag}", ctx=fold_context(ctx, label)
        )
        thresholds = tune_thresholds(val_proba(), y_all[val_idx]) if multi else None  # the best epoch's, on the carve only
        training = loop.training_manifest(
            state,
            trainable_params=int(sum(q.numel() for q in net.parameters())),
            head_modules=["linear"],
            target_modules=None,
            n_truncated=estats.n_truncated,
        )
        head = LinearHead(classes, net.weight.detach().numpy().copy(), net.bias.detach().numpy().copy(), multi, thresholds)
        out = {
            "head": head,
            "training": training,
            "state": state,
            "n_fit": int(len(fit_idx)),
            "n_val": int(len(val_idx)),
            "val_index": val_idx.tolist(),
            "thresholds": thresholds,
        }
        if multi:
            out["pos_weight"] = None if weights is None else weights.tolist()
        return out

    trainings: dict[str, dict] = {}

    def fit_predict(fold):
        tag = f"r{fold.repeat}f{fold.fold}"
        run = trainings[tag] = train_on(fold.train, tag, scoring.fold_label(plan, fold))
        proba = run["head"].predict_proba(X[fold.test])
        if multi:  # each label's own probability, and the labels at or above the fold's thresholds
            return proba, (proba >= run["thresholds"]).astype(np.int8)
        return proba

    oof = scoring.cross_predict(plan, fit_predict, n_out, ctx)
    m = scoring.score(dataset, plan, oof, n_boot=p.n_boot, seed=p.seed)
    if plan.name == "cv":
        ctx.check_stop("Cancelled before training on every letter.")
        final = train_on(plan.final_train, "all", "all letters")
    else:
        final = trainings.pop("r0f0")
    manifest = {
        "kind": "evaluation",
        "key": key,
        "model": identity,
        "method": method,
        "method_title": LINEAR_PROBE.title,
        "stage": LINEAR_PROBE.stage,
        "predictor": "embedding-classifier",
        "embedder": {"pooling": e.pooling, "max_length": e.max_length, "windows": e.windows},
        "head": HEAD,
        "config": {**opts.to_dict(), "train": loop.train_config(ft, p.seed)},
        "data": artifacts.data_manifest(dataset),
        "protocol": plan.manifest(),
        **loop.folds_manifest(plan.name, final, trainings),  # refit, training, fold_trainings
        "embeddings": asdict(estats),
        "placement": {"device": placement.device, "dtype": placement.dtype, "head": f"{TRAIN_ON.device}, {TRAIN_ON.dtype}"},
        "timings": {
            "embed_s": estats.seconds,
            "embed_cache_hit": estats.cache_hit,
            "train_s": final["state"]["train_s"] + sum(t["state"]["train_s"] for t in trainings.values()),
            "total_s": time.perf_counter() - t_start,
        },
        **artifacts.provenance(m),  # versions, environment, metrics, created
        **(multilabel_manifest(classes, final, trainings) if multi else {}),
    }

    def write_files(tmp):
        from engine.cache.estimator_files import save_estimator

        save_estimator(tmp, final["head"])
        scoring.write_predictions(tmp, dataset, plan, oof)

    folder.parent.mkdir(parents=True, exist_ok=True)
    manifest = artifacts.write(folder, manifest, write_files)
    loop.discard_staging(key, loop.checkpoint_path(key).with_suffix(".folds"), trainings)
    ctx.progress(1, 1, "done")
    return StepResult(entry.name, method, m, str(folder), False, manifest)


LINEAR_PROBE = StepKind("linear-probe", "linear head (before fine-tuning)", "frozen", probe_step, READS, label_sets=True)
