"""The `setfit` step: contrastive fine-tuning of a sentence encoder, then a logistic head (the SetFit recipe).

For each fold of the plan (engine.protocols), on that fold's training letters only:

1. the few-shot set is the fold's training letters: the plan keeps `labels_per_class` of each label (a split option,
   every method's: drawn seeded and nested, so 8 of them are among 16; None: all);
2. pairs of them are drawn (`draw_pairs`, after setfit's sampler): positive (same label, target cosine 1) and
   negative (different labels, target 0), as many of each (the rarer kind cycled, setfit's "oversampling"),
   at most `setfit_pairs` in all;
3. the whole encoder is trained (engine.finetune.loop: seeded, checkpointed, cancellable, live train_loss) to
   make the cosine similarity of each pair's pooled vectors match its target (setfit's CosineSimilarityLoss),
   on letters cut to `setfit_max_length` tokens (short pairs keep a CPU training within minutes);
4. the few-shot letters and the fold's test letters are embedded with the tuned encoder (pooling, max_length, windows,
   as every embedding method does) and a logistic regression on the L2-normalised vectors is fitted on the
   few-shot letters and scores the test letters.

Under cv one more training on every letter (the plan's `final_train`: labels_per_class of them when set) gives the
stored classifier (under holdout: the training split's).
The artifact holds the tuned encoder (encoder/, in transformers' format) and the head (classifier.joblib); its
predictor `tuned-encoder` is rebuilt by `load_tuned_encoder` + engine.classifiers' EmbeddingClassifier.
Own code, not the `setfit` package: it would pull datasets, evaluate, aiohttp and eight more packages for a
recipe this short, and the engine's loop gives the step its checkpoints, cancellation and curves.
"""

from __future__ import annotations

import dataclasses
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

from engine.cache import artifacts
from engine.cache.artifacts import StepResult
from engine.cache.context import StepContext, ensure
from engine.cache.storage import atomic_dir, evaluations_dir, sha256_json
from engine.data.dataset import Dataset
from engine.evaluation import scoring
from engine.features import extract
from engine.finetune import loop
from engine.finetune.loading import open_for_training, prepare_tokenizer
from engine.methods.base import StepKind
from engine.models import catalog
from engine.models.devices import choose
from engine.options.groups import Options, fields, names
from engine.protocols import plans

SETFIT_VERSION = 1  # bump when the recipe changes its results, to invalidate stored setfit artifacts
PREDICTOR = "tuned-encoder"
FINETUNE_READS = ("learning_rate", "batch_size", "warmup_ratio", "weight_decay", "grad_accum")
READS = (*names("protocol"), "pooling", "max_length", "windows", *names("setfit"), *FINETUNE_READS)
ENUMERATE_MAX = 500_000  # up to this many possible pairs they are enumerated (setfit's way); above, drawn at random


def setfit_key(identity: dict, data_hash: str, opts: Options, dtype: str, plan_hash: str) -> str:
    """The cache key of a setfit evaluation: model, letters, folds, dtype and every key option the step reads."""
    ident = {k: v for k, v in identity.items() if k not in ("model_type", "kind")}
    keyed = {f.name for f in fields() if f.key}
    chosen = {name: opts.get(name) for name in READS if name in keyed}
    if chosen["windows"] == 1:  # cut at max_length, as before the option existed: the keys stored then stay valid
        del chosen["windows"]
    return sha256_json(
        {"v": SETFIT_VERSION, "method": "setfit", "model": ident, "data": data_hash, "plan": plan_hash, "options": chosen, "dtype": dtype}
    )[:32]


def draw_pairs(idx, labels, cap: int, seed: int) -> np.ndarray:
    """Pairs of the letters `idx` as rows (a, b, target): target 1 for the same label, 0 for different ones.
    As setfit's sampler: every pair of distinct letters, shuffled, split into positives and negatives; both kinds
    get as many pairs (the rarer kind is cycled), interleaved, and at most `cap` pairs are kept (half of each kind)."""
    idx = np.asarray(idx)
    y = np.asarray(labels, dtype=str)[idx]
    n = len(idx)
    rng = np.random.default_rng(seed)
    counts = np.unique(y, return_counts=True)[1]
    n_pos = int((counts * (counts - 1) // 2).sum())
    n_neg = n * (n - 1) // 2 - n_pos
    each = min(max(n_pos, n_neg), max(1, cap // 2))
    if n * (n - 1) // 2 <= ENUMERATE_MAX:
        a, b = np.triu_indices(n, 1)
        order = rng.permutation(len(a))
        a, b = a[order], b[order]
        same = y[a] == y[b]
        pos, neg = np.stack([a[same], b[same]], 1), np.stack([a[~same], b[~same]], 1)
    else:  # too many to list: draw random pairs until both kinds have enough (repeats are rare and harmless)
        pos, neg = np.empty((0, 2), int), np.empty((0, 2), int)
        while (n_pos and len(pos) < each) or (n_neg and len(neg) < each):
            a, b = rng.integers(0, n, 4 * each), rng.integers(0, n, 4 * each)
            a, b = a[a != b], b[a != b]
            same = y[a] == y[b]
            pos = np.concatenate([pos, np.stack([a[same], b[same]], 1)])[:each]
            neg = np.concatenate([neg, np.stack([a[~same], b[~same]], 1)])[:each]
    parts = [np.column_stack([np.resize(p, (each, 2)), np.full(each, t)]) for p, t in ((pos, 1), (neg, 0)) if len(p)]
    rows = np.stack(parts, 1).reshape(-1, 3)[:cap] if len(parts) == 2 else parts[0][:cap]
    return np.column_stack([idx[rows[:, 0]], idx[rows[:, 1]], rows[:, 2]])


def load_encoder(model: str, placement):
    """(the encoder without any head, in fp32 for training; tokenizer; identity; kind; entry; folder; config)."""
    import torch
    from transformers import AutoModel, AutoTokenizer

    entry, folder, identity, config, kind = open_for_training(model, placement)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    prepare_tokenizer(tokenizer, config)
    net = AutoModel.from_pretrained(folder, config=config, dtype=torch.float32)
    net.config.pad_token_id = tokenizer.pad_token_id
    return net.to(placement.device), tokenizer, {**identity, "model_type": config.model_type}, kind, entry, folder, config


def load_tuned_encoder(artifact, placement=None) -> catalog.LoadedModel:
    """A stored setfit evaluation's tuned encoder (files checked against the manifest) as a feature extractor."""
    from transformers import AutoModel, AutoTokenizer

    placement = placement or choose()
    folder = Path(artifact)
    manifest = artifacts.read_manifest(folder)
    artifacts.verify_tree(folder, "encoder/")
    tokenizer = AutoTokenizer.from_pretrained(folder / "encoder")
    net = AutoModel.from_pretrained(folder / "encoder", dtype=placement.torch_dtype).to(placement.device).eval()
    for p in net.parameters():
        p.requires_grad_(False)
    m = manifest["model"]
    entry = catalog.ModelEntry(m["name"], "local", str(folder / "encoder"), "setfit-tuned encoder", m.get("kind"))
    identity = {**{k: v for k, v in m.items() if k not in ("model_type", "kind")}, "setfit": manifest["key"]}
    return catalog.LoadedModel(entry, net, tokenizer, m.get("kind", "encoder"), identity, placement, folder / "encoder", net.config)


def make_head(seed: int):
    """setfit's head: logistic regression, here on L2-normalised vectors (as a sentence encoder's are)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import Normalizer

    return make_pipeline(Normalizer(), LogisticRegression(max_iter=2000, random_state=seed))


def setfit_step(dataset: Dataset, model: str, method: str, opts: Options, ctx: StepContext | None = None) -> StepResult:
    """For each fold: draw pairs of its training letters (the few shots), tune the encoder on the pairs, fit the logistic
    head on the tuned vectors, score the test letters; under cv, once more on the plan's final_train."""
    import torch

    ctx = ensure(ctx)
    t_start = time.perf_counter()
    placement = choose()
    classes = dataset.classes
    p, e, s = opts.protocol, opts.embedding, opts.setfit
    plan = plans.plan(dataset, p, "setfit")
    entry = catalog.resolve(model)
    scoring.require_unseen(entry, dataset, plan)
    key = setfit_key(catalog.locate(entry)[1], dataset.data_hash, opts, placement.dtype, plan.hash)
    folder = evaluations_dir() / key
    if hit := artifacts.stored(folder, entry.name, "setfit"):
        return hit
    ft = opts.finetune.resolved("setfit")
    ft = dataclasses.replace(
        ft, epochs=s.setfit_epochs, patience=s.setfit_epochs + 1
    )  # learning rate: 2e-5 by default (SetFit's body rate)
    y_str = np.asarray(dataset.labels, dtype=str)
    train_length = min(s.setfit_max_length, e.max_length)
    staging = loop.checkpoint_path(key).with_suffix(".setfit")
    final_tag = "all" if plan.name == "cv" else "r0f0"

    def train_on(train_idx: np.ndarray, tag: str, label: str, test_idx: np.ndarray) -> dict:
        """Tune a fresh encoder on pairs of the few-shot letters `train_idx`, fit the head; (test probabilities, record)."""
        fctx = ctx.labelled(label)
        seed = loop.seed_of(p.seed, tag)
        shots = np.sort(np.asarray(train_idx))  # the plan's training letters: labels_per_class of each label when set
        pairs = draw_pairs(shots, y_str, s.setfit_pairs, seed)
        fctx.progress(0, 1, "loading model")
        loop.seed_torch(seed)
        net, tokenizer, identity, kind, entry_, model_folder, config = load_encoder(model, placement)
        extract.check_pooling(e.pooling, kind)
        tids, n_cut = extract.tokenize(tokenizer, [dataset.texts[i] for i in shots], train_length)
        at = {int(i): r for r, i in enumerate(shots)}
        left, right = np.array([at[int(i)] for i in pairs[:, 0]]), np.array([at[int(i)] for i in pairs[:, 1]])
        pair_ids = [np.concatenate([tids[a], tids[b]]) for a, b in zip(left, right, strict=True)]  # lengths: batching
        targets = torch.tensor(pairs[:, 2], dtype=torch.float32)

        def loss_fn(_input_ids, _mask, batch):
            letters, where = np.unique(np.concatenate([left[batch], right[batch]]), return_inverse=True)
            input_ids, mask = loop.collate(tids, letters, tokenizer.pad_token_id, placement.device, multiple=loop.PAD_MULTIPLE)
            hidden = net(input_ids=input_ids, attention_mask=mask).last_hidden_state
            vec = extract.pool(hidden, mask, e.pooling)
            u, v = vec[torch.from_numpy(where[: len(batch)])], vec[torch.from_numpy(where[len(batch) :])]
            cos = torch.nn.functional.cosine_similarity(u, v)
            return torch.nn.functional.mse_loss(cos, targets[batch].to(cos.device))

        epochs_done = [0]

        def validate() -> dict:  # setfit keeps the last epoch: no validation letters are taken from the few shots
            epochs_done[0] += 1
            return {"score": float(epochs_done[0])}

        state = loop.train(
            net,
            pair_ids,
            np.arange(len(pairs)),
            loss_fn,
            validate,
            ft,
            seed,
            placement,
            pad_id=tokenizer.pad_token_id,
            key=f"{key}-{tag}",
            ctx=fctx,
        )
        if tag == final_tag:
            with atomic_dir(staging / tag) as tmp:
                net.save_pretrained(tmp / "encoder")
                tokenizer.save_pretrained(tmp / "encoder")
        net = net.to(placement.torch_dtype).eval()  # embedded as the stored encoder is loaded (engine.classifiers)
        loaded = catalog.LoadedModel(entry_, net, tokenizer, kind, identity, placement, model_folder, config)
        wanted = np.concatenate([shots, test_idx])
        fctx.check_stop("Cancelled before embedding with the tuned encoder.")
        with tempfile.TemporaryDirectory(prefix="clinbench-setfit-") as tmp:
            out = Path(tmp) / "vectors.npy"
            estats = extract.extract(
                loaded,
                [dataset.texts[i] for i in wanted],
                out,
                pooling=e.pooling,
                max_length=e.max_length,
                batch_tokens=e.batch_tokens,
                windows=e.windows,
                ctx=fctx,
            )
            X = np.array(np.load(out))
        fctx.progress(0, 1, "fitting the logistic head")
        head = make_head(seed).fit(X[: len(shots)], y_str[shots])
        proba = scoring.aligned(head.predict_proba(X[len(shots) :]), head.classes_, classes) if len(test_idx) else None
        training = loop.training_manifest(
            state,
            n_shots=int(len(shots)),
            n_pairs=int(len(pairs)),
            n_positive=int(pairs[:, 2].sum()),
            train_max_length=train_length,
            n_truncated_training=int(n_cut),
            embed_s=estats.seconds,
        )
        return {"proba": proba, "head": head, "identity": identity, "kind": kind, "training": training, "state": state}

    trainings: dict[str, dict] = {}

    def fit_predict(fold):
        tag = f"r{fold.repeat}f{fold.fold}"
        run = trainings[tag] = train_on(fold.train, tag, scoring.fold_label(plan, fold), fold.test)
        return run.pop("proba")

    oof = scoring.cross_predict(plan, fit_predict, len(classes), ctx)
    m = scoring.score(dataset, plan, oof, n_boot=p.n_boot, seed=p.seed)
    if plan.name == "cv":
        ctx.check_stop("Cancelled before training on every letter.")
        final = train_on(plan.final_train, "all", "all letters", np.arange(0))
    else:
        final = trainings.pop("r0f0")
    autocast = placement.dtype if placement.dtype == "bfloat16" else None
    manifest = {
        "kind": "evaluation",
        "key": key,
        "model": {**final["identity"], "kind": final["kind"]},
        "method": "setfit",
        "method_title": SETFIT.title,
        "stage": SETFIT.stage,
        "predictor": PREDICTOR,
        "embedder": {"pooling": e.pooling, "max_length": e.max_length, "windows": e.windows},
        "config": {**opts.to_dict(), "train": loop.train_config(ft, p.seed), "head": "normalise + logistic regression"},
        "data": artifacts.data_manifest(dataset),
        "protocol": plan.manifest(),
        **loop.folds_manifest(plan.name, final, trainings),  # refit, training, fold_trainings
        "placement": {"device": placement.device, "dtype": placement.dtype, "weights": "float32", "autocast": autocast},
        "timings": {
            "train_s": final["state"]["train_s"] + sum(t["state"]["train_s"] for t in trainings.values()),
            "total_s": time.perf_counter() - t_start,
        },
        **artifacts.provenance(m),  # versions, environment, metrics, created
    }

    def write_files(tmp):
        from engine.cache.estimator_files import save_estimator

        shutil.move(str(staging / final_tag / "encoder"), tmp / "encoder")
        save_estimator(tmp, final["head"])
        scoring.write_predictions(tmp, dataset, plan, oof)

    folder.parent.mkdir(parents=True, exist_ok=True)
    manifest = artifacts.write(folder, manifest, write_files)
    loop.discard_staging(key, staging, trainings)
    ctx.progress(1, 1, "done")
    return StepResult(final["identity"]["name"], "setfit", m, str(folder), False, manifest)


SETFIT = StepKind("setfit", "SetFit: contrastive encoder tuning → logistic head", "tuned", setfit_step, READS)
