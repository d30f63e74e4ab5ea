"""The `setfit` method: contrastive fine-tuning of a sentence encoder, then a logistic head (the SetFit recipe).

For each fold of the plan (the harness's fold loop, engine.methods.harness), on that fold's training letters only:

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

Two labels with an operating threshold (threshold_rule other than most-probable): the threshold must be chosen on
letters the tuned encoder did not learn from. Out-of-fold head probabilities would not do: their vectors come from an
encoder tuned on those very letters, so they are too sure of themselves. So, only then, a validation set is carved
from the fold's training letters (`Job.carve`: duplicate groups whole, val_size of them), the encoder is tuned and the
head fitted on the rest, and the threshold is chosen on the head's probabilities of the carve. With few shots the carve
costs training letters; that is the price of a threshold that holds on new letters. Every other task (more than two
labels, or most-probable) uses every training letter, as before the harness, to the bit.

Under cv one more training on every letter (the plan's `final_train`: labels_per_class of them when set) gives the
stored classifier (under holdout: the training split's).
The artifact holds the tuned encoder (encoder/, in transformers' format) and the head (classifier.skops); its
predictor `tuned-encoder` is rebuilt by `load_tuned_encoder` + engine.classifiers' EmbeddingClassifier.
Own code, not the `setfit` package: it would pull datasets, evaluate, aiohttp and eight more packages for a
recipe this short, and the engine's loop gives the step its checkpoints, cancellation and curves.
"""

from __future__ import annotations

import dataclasses
import shutil
import tempfile
from pathlib import Path

import numpy as np

from engine.cache import artifacts
from engine.cache.estimator_files import save_estimator
from engine.cache.storage import atomic_dir, sha256_json
from engine.evaluation import scoring
from engine.features import extract
from engine.finetune import loop
from engine.finetune.loading import open_for_training, prepare_tokenizer
from engine.methods.base import Job, Method
from engine.models import catalog
from engine.models.devices import choose
from engine.options.groups import FineTuneOptions, Options, fields, names

SETFIT_VERSION = 1  # bump when the recipe changes its results, to invalidate stored setfit artifacts
PREDICTOR = "tuned-encoder"
FINETUNE_READS = ("learning_rate", "batch_size", "warmup_ratio", "weight_decay", "grad_accum")
READS = (*names("protocol"), "pooling", "max_length", "windows", *names("setfit"), *FINETUNE_READS)  # (its key's)
ENUMERATE_MAX = 500_000  # up to this many possible pairs they are enumerated (setfit's way); above, drawn at random


def setfit_key(identity: dict, data_hash: str, opts: Options, dtype: str, plan_hash: str, carved: bool = False) -> str:
    """The cache key of a setfit evaluation: model, letters, folds, dtype and every key option of READS; `carved`: a
    validation set is carved for the decision (two labels with a threshold), so val_size enters it too."""
    ident = {k: v for k, v in identity.items() if k not in ("model_type", "kind")}
    keyed = {f.name for f in fields() if f.key}
    chosen = {name: opts.get(name) for name in READS if name in keyed}
    if chosen["windows"] == 1:  # cut at max_length, as before the option existed: the keys stored then stay valid
        del chosen["windows"]
    key = sha256_json(
        {"v": SETFIT_VERSION, "method": "setfit", "model": ident, "data": data_hash, "plan": plan_hash, "options": chosen, "dtype": dtype}
    )[:32]
    return sha256_json({"key": key, "val_size": opts.finetune.val_size})[:32] if carved else key


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


class Tuned:
    """An encoder tuned on pairs of one fold's few-shot letters (`shots`), and the logistic head on its vectors of them.

    The head is fitted when the first letters are asked for: the shots (and the decision letters `val`, if carved) are
    embedded in the same pass as those letters, as the step did before the harness, so the figures reproduce to the bit
    (a batch is padded to its longest letter, so a letter's vector may move in the last bits with its batch-mates)."""

    def __init__(
        self, job: Job, loaded: catalog.LoadedModel, shots: np.ndarray, val: np.ndarray | None, tag: str, label: str, record: dict
    ):
        self.job, self.loaded, self.shots, self.val, self.tag, self.label = job, loaded, shots, val, tag, label
        self.record = record
        self.head = None
        self._val_proba: np.ndarray | None = None

    def _embed(self, rows: np.ndarray) -> np.ndarray:
        job, e = self.job, self.job.opts.embedding
        fctx = job.fold_context(self.label)
        fctx.check_stop("Cancelled before embedding with the tuned encoder.")
        with tempfile.TemporaryDirectory(prefix="clinbench-setfit-") as tmp:
            out = Path(tmp) / "vectors.npy"
            estats = extract.extract(
                self.loaded,
                [job.dataset.texts[i] for i in rows],
                out,
                pooling=e.pooling,
                max_length=e.max_length,
                batch_tokens=e.batch_tokens,
                windows=e.windows,
                ctx=fctx,
            )
            self.record["training"]["embed_s"] = self.record["training"].get("embed_s", 0.0) + estats.seconds
            return np.array(np.load(out))

    def _vectors(self, rows: np.ndarray) -> np.ndarray:
        """The tuned encoder's vectors of the letters `rows` (the first call also fits the head: see the class)."""
        if self.head is not None:
            return self._embed(rows)
        val = np.arange(0) if self.val is None else self.val
        X = self._embed(np.concatenate([self.shots, val, rows]))
        n, v = len(self.shots), len(val)
        self.job.fold_context(self.label).progress(0, 1, "fitting the logistic head")
        self.head = make_head(self.record["seed"]).fit(X[:n], self.job.y[self.shots])
        if v:
            self._val_proba = self._aligned(X[n : n + v])
        return X[n + v :]

    def _aligned(self, X: np.ndarray) -> np.ndarray:
        return scoring.aligned(self.head.predict_proba(X), self.head.classes_, self.job.classes)

    def fitted_head(self):
        """The head (fitted on the shots' vectors now, if no letter was asked for yet: the refit on every letter)."""
        if self.head is None:
            self._vectors(np.arange(0))
        return self.head

    def predict_proba(self, rows: np.ndarray) -> np.ndarray:
        X = self._vectors(np.asarray(rows))
        return self._aligned(X) if len(X) else np.zeros((0, len(self.job.classes)))

    def decision_letters(self) -> tuple[np.ndarray, np.ndarray] | None:
        if self.val is None:
            return None
        self.fitted_head()
        return self.val, self._val_proba


def staging(job: Job) -> Path:
    return loop.checkpoint_path(job.state["key"]).with_suffix(".setfit")


class SetFit(Method):
    name = "setfit"
    title = "SetFit: contrastive encoder tuning → logistic head"
    stage = "tuned"
    reads = (*READS, "val_size", *names("decision"))  # (val_size: the carve of a two-label task with a threshold)
    predictor = PREDICTOR

    def setup(self, job: Job) -> None:
        entry = catalog.resolve(job.model)
        job.identity = {"name": entry.name}
        job.state.update(located=catalog.locate(entry)[1], final="all" if job.plan.name == "cv" else "r0f0")

    def key(self, job: Job) -> str:
        job.state["key"] = setfit_key(
            job.state["located"], job.dataset.data_hash, job.opts, job.placement.dtype, job.plan.hash, carved=job.needs_decision
        )
        return job.state["key"]

    def _train(self, job: Job) -> FineTuneOptions:
        """The training options: setfit's epochs, every one kept (no early stopping), the rest the finetune group's."""
        return dataclasses.replace(
            job.opts.finetune.resolved(self.name), epochs=job.opts.setfit.setfit_epochs, patience=job.opts.setfit.setfit_epochs + 1
        )  # learning rate: 2e-5 by default (SetFit's body rate)

    def fit(self, job: Job, train: np.ndarray, tag: str, label: str) -> Tuned:
        """Tune a fresh encoder on pairs of the few-shot letters (the training letters, less the carve when the decision
        needs one); the head is fitted on its vectors when letters are first asked for (Tuned)."""
        import torch

        e, s, placement = job.opts.embedding, job.opts.setfit, job.placement
        fctx = job.fold_context(label)
        seed = loop.seed_of(job.opts.protocol.seed, tag)
        fit_idx, val = job.carve(train) if job.needs_decision else (train, None)
        shots = np.sort(np.asarray(fit_idx))  # the plan's training letters: labels_per_class of each label when set
        pairs = draw_pairs(shots, job.y, s.setfit_pairs, seed)
        fctx.progress(0, 1, "loading model")
        loop.seed_torch(seed)
        net, tokenizer, identity, kind, entry, model_folder, config = load_encoder(job.model, placement)
        extract.check_pooling(e.pooling, kind)
        train_length = min(s.setfit_max_length, e.max_length)
        tids, n_cut = extract.tokenize(tokenizer, [job.dataset.texts[i] for i in shots], train_length)
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

        def validate() -> dict:  # setfit keeps the last epoch (the carve, when there is one, is for the decision only)
            epochs_done[0] += 1
            return {"score": float(epochs_done[0])}

        state = loop.train(
            net,
            pair_ids,
            np.arange(len(pairs)),
            loss_fn,
            validate,
            self._train(job),
            seed,
            placement,
            pad_id=tokenizer.pad_token_id,
            key=f"{job.state['key']}-{tag}",
            ctx=fctx,
        )
        if tag == job.state["final"]:  # the stored classifier's encoder, in float32 as trained
            with atomic_dir(staging(job) / tag) as tmp:
                net.save_pretrained(tmp / "encoder")
                tokenizer.save_pretrained(tmp / "encoder")
        net = net.to(placement.torch_dtype).eval()  # embedded as the stored encoder is loaded (engine.methods.classifiers)
        loaded = catalog.LoadedModel(entry, net, tokenizer, kind, identity, placement, model_folder, config)
        job.identity = {**identity, "kind": kind}
        training = loop.training_manifest(
            state,
            n_shots=int(len(shots)),
            n_pairs=int(len(pairs)),
            n_positive=int(pairs[:, 2].sum()),
            train_max_length=train_length,
            n_truncated_training=int(n_cut),
        )
        record = {"training": training, "state": state, "seed": seed}
        if val is not None:
            record.update(n_fit=int(len(shots)), n_val=int(len(val)), val_index=np.asarray(val).tolist())
        return Tuned(job, loaded, shots, val, tag, label, record)

    def fold_done(self, job: Job, fitted: Tuned, tag: str) -> None:
        """The fold's tuned encoder is freed (the stored classifier's was staged when trained)."""
        fitted.loaded = None

    def save(self, job: Job, final: Tuned, folder: Path) -> None:
        shutil.move(str(staging(job) / job.state["final"] / "encoder"), folder / "encoder")
        save_estimator(folder, final.fitted_head())

    def record(self, job: Job, final: Tuned, fits: list[Tuned]) -> dict:
        final.fitted_head()  # (its embedding time is part of its training record)
        trainings = {} if job.plan.name != "cv" else {f.tag: f.record for f in fits}
        placement, e = job.placement, job.opts.embedding
        return {
            "model": job.identity,
            "embedder": {"pooling": e.pooling, "max_length": e.max_length, "windows": e.windows},
            "config": {
                **job.opts.to_dict(),
                "train": loop.train_config(self._train(job), job.opts.protocol.seed),
                "head": "normalise + logistic regression",
            },
            **loop.folds_manifest(job.plan.name, final.record, trainings),  # refit, training, fold_trainings
            "placement": {
                "device": placement.device,
                "dtype": placement.dtype,
                "weights": "float32",
                "autocast": placement.dtype if placement.dtype == "bfloat16" else None,
            },
            "timings": {"train_s": sum(f.record["state"]["train_s"] for f in (fits if final in fits else [final, *fits]))},
        }

    def finish(self, job: Job, fits: list[Tuned]) -> None:
        loop.discard_staging(job.state["key"], staging(job), [f.tag for f in fits])


METHOD = SetFit()
