"""The `instruct-lora` method: instruction tuning of a causal LM with LoRA, then classification by label likelihood.

Each training letter becomes one sequence: the zero-shot prompt around the letter (engine.prompting: the template, the
letter cut so that prompt + longest label fit `max_length`) followed by its label's words; the loss is the summed
negative log-likelihood of the answer tokens only (every other position is masked, -100), class-weighted by default.
LoRA adapters (peft, CAUSAL_LM) on the attention projections are trained by engine.finetune.loop (seeded batches,
checkpoints, cancel/resume, live curves) inside the harness's fold loop (engine.methods.harness); the epoch is chosen on
a validation carve of the fold's training letters by their macro-F1 under label likelihood. The fold's test letters are
then scored exactly as zero-shot scores them (scoring, contextual calibration on validation letters: the prompt options)
by the base model with the saved adapter merged, the same way the stored classifier is loaded (`load_tuned_lm`), so it
reproduces the step's predictions. Two labels with a threshold rule: the harness chooses the threshold on the same
merged model's probabilities of the validation carve (letters the training did not learn from).

Under cv the harness trains once more on every letter for the stored classifier; under holdout/fixed the fold's model is it.
The artifact (predictor `tuned-lm`) holds prompt.json (as zero-shot's) and the adapter in peft's format (adapter/).
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import time
from pathlib import Path

import numpy as np

from engine.cache import artifacts
from engine.cache.context import StepContext
from engine.cache.storage import atomic_dir
from engine.errors import ClinBenchError
from engine.finetune import loop
from engine.finetune.heads import class_weights
from engine.finetune.loading import load_lm_model, lora_config, lora_manifest
from engine.methods import incontext, prompting
from engine.methods.base import Job, Method
from engine.methods.incontext import PROMPT_FILE
from engine.methods.prompting import LM, Scorer, softmax
from engine.models import catalog
from engine.models.devices import Placement
from engine.options import groups
from engine.options.groups import Options

VERSION = 1
NAME = "instruct-lora"
PREDICTOR = "tuned-lm"
# no examples in the prompt; no server model (it tunes weights here), so neither its prefix nor its allowed hosts
PROMPT_READS = tuple(n for n in groups.names("prompt") if n not in ("k_shot", "with_letter_alone", "server_prefix", "allowed_hosts"))
READS = (*groups.names("protocol"), *PROMPT_READS, "max_length", *groups.names("finetune"), *groups.names("decision"))


def instruct_key(identity: dict, data_hash: str, opts: Options, dtype: str, plan_hash: str, chat: list[str] | None = None) -> str:
    """The cache key: the training's (model, letters, fine-tuning options, max_length, seed) plus the prompt options it
    reads, the prompt defaults and the plan (its hash covers the folds and labels_per_class)."""
    prompt = {n: getattr(opts.prompt, n) for n in PROMPT_READS if n != "chat_template"}  # (its resolved frame: `chat`)
    extra = {
        "instruct": VERSION,
        "prompt": prompt,
        "defaults": [prompting.DEFAULT_TEMPLATE, prompting.CONTENT_FREE],
        "plan": plan_hash,
        **({"chat": chat} if chat else {}),
    }
    return loop.training_key(NAME, identity, data_hash, opts, dtype, extra=extra)


def sequences(scorer: Scorer, texts: list[str], y: np.ndarray) -> tuple[list[np.ndarray], np.ndarray, int]:
    """(token ids of each letter's prompt + its label's words, answer tokens per letter, letters cut). The answer is the
    last `n_answer[i]` tokens of sequence i."""
    budget = scorer.letter_budget()
    ids, n_answer, n_cut = [], np.zeros(len(texts), dtype=np.int64), 0
    for i, (text, c) in enumerate(zip(texts, y, strict=True)):
        answer = scorer.label_ids[int(c)]
        ids.append(np.asarray(scorer.special + scorer.prompt_ids(text, budget) + answer, dtype=np.int64))
        n_answer[i], n_cut = len(answer), n_cut + int(scorer.letter_ids(text, budget)[1])
    return ids, n_answer, n_cut


def answer_labels(input_ids, lengths: np.ndarray, n_answer: np.ndarray):
    """Labels of a right-padded batch for the causal-LM loss: the input ids on the answer tokens, -100 everywhere else."""
    import torch

    labels = torch.full_like(input_ids, -100)
    for row, (length, n) in enumerate(zip(lengths.tolist(), n_answer.tolist(), strict=True)):
        labels[row, length - n : length] = input_ids[row, length - n : length]
    return labels


def answer_nll(net, input_ids, mask, labels):
    """Summed negative log-likelihood of each row's answer tokens. Only the last positions' logits are computed (as
    many as the earliest answer needs): the vocabulary projection of every letter token would dominate memory."""
    import torch

    starts = (labels != -100).int().argmax(1)
    keep = int(input_ids.shape[1] - int(starts.min()) + 1)
    try:
        logits = net(input_ids=input_ids, attention_mask=mask, logits_to_keep=keep).logits.float()
    except TypeError:  # a model whose forward has no logits_to_keep: every position
        logits = net(input_ids=input_ids, attention_mask=mask).logits.float()
    offset = input_ids.shape[1] - logits.shape[1]  # position of logits[:, 0]
    targets = labels[:, offset + 1 :]
    nll = torch.nn.functional.cross_entropy(logits[:, :-1].transpose(1, 2), targets, ignore_index=-100, reduction="none")
    return nll.sum(1)


def as_lm(name: str, net, tokenizer, identity: dict, placement: Placement, config) -> LM:
    context = int(getattr(config, "max_position_embeddings", None) or prompting.DEFAULT_CONTEXT)
    return LM(name, net, tokenizer, identity, placement, context)


def load_tuned_lm(model: str, adapter: Path, placement: Placement | None = None) -> LM:
    """The base causal LM (prompting.load_lm: its placement's dtype) with a stored LoRA adapter merged into it."""
    from peft import PeftModel

    lm = prompting.load_lm(model, placement)
    net = PeftModel.from_pretrained(lm.net, adapter).merge_and_unload()
    return dataclasses.replace(lm, net=net.eval())


def label_scores(scorer: Scorer, texts: list[str], po, prior, ctx: StepContext | None = None, stage: str = "scoring letters") -> tuple:
    """(probabilities, summed log-likelihoods) of every label for `texts`, scored and calibrated (by `prior`: prior sums or
    None) as zero-shot does."""
    sums = scorer.token_logprobs(texts, ctx=ctx, stage=stage)
    return softmax(scorer.scores(sums, po.scoring, prior)), sums


def tuned_prior(scorer: Scorer, texts, y_str, classes, val_idx, opts: Options, repeat: int, fold: int, scored=None):
    """The calibration prior of a tuned model: as zero-shot's, with its letters drawn from the training's validation letters
    (the tuned model has read the other training letters with their answers)."""
    return incontext.prior_sums(scorer, texts, y_str, classes, np.asarray(val_idx), opts, repeat, fold, scored=scored)[0]


class TunedLM:
    """An instruction-tuned model of one fold (harness's `Fitted`): the base model with the fold's adapter merged, as the
    stored classifier loads it, its prompt scorer and its prior (drawn from the fold's validation letters)."""

    def __init__(self, job: Job, tag: str, label: str, trained: dict):
        self.job, self.tag, self.label, self.trained = job, tag, label, trained
        s = job.state
        self.scorer = Scorer(
            load_tuned_lm(job.model, staging(job) / tag / "adapter", job.placement),
            job.classes,
            s["template"],
            job.opts.prompt.verbalizers,
            job.opts.embedding.max_length,
            s["chat"],
        )
        self.template, self.words, self.scorer_chat = self.scorer.template, self.scorer.words, self.scorer.chat
        self.val = np.asarray(trained["val_index"])
        repeat, fold = job.fold_numbers(tag)
        self.prior = tuned_prior(self.scorer, s["texts"], s["y_str"], job.classes, self.val, job.opts, repeat, fold)

    def proba(self, rows: np.ndarray, stage: str) -> np.ndarray:
        texts = [self.job.state["texts"][i] for i in rows]
        return label_scores(self.scorer, texts, self.job.opts.prompt, self.prior, self.job.fold_context(self.label), stage)[0]

    def predict_proba(self, rows: np.ndarray) -> np.ndarray:
        t0 = time.perf_counter()
        out = self.proba(np.asarray(rows), "scoring test letters")
        self.job.state["score_s"] += time.perf_counter() - t0
        self.job.state["n_scored"] += len(rows)
        return out

    def decision_letters(self) -> tuple[np.ndarray, np.ndarray]:
        """The validation carve: letters the training did not learn from (it chose its epoch on them)."""
        return self.val, self.proba(self.val, "scoring validation letters for the threshold")

    def stored(self) -> dict:
        po = self.job.opts.prompt
        return {
            "template": self.template,
            "classes": self.job.classes,
            "words": self.words,
            "scoring": po.scoring,
            "calibration": po.calibration,
            "calibrate_on": po.calibrate_on,
            "prior_sums": None if self.prior is None else np.asarray(self.prior).tolist(),
            "max_length": self.job.opts.embedding.max_length,
            "prefix_ids": [],
            "chat": self.scorer_chat,
        }


def staging(job: Job) -> Path:
    return loop.checkpoint_path(job.state["key"]).with_suffix(".folds")


def train_on(job: Job, train_idx: np.ndarray, tag: str, label: str) -> dict:
    """Train fresh adapters on `train_idx` (validation carved from it), seeded by (seed, tag); saved under staging/tag."""
    import torch
    from peft import get_peft_model
    from sklearn.metrics import f1_score

    s, opts, classes, placement = job.state, job.opts, job.classes, job.placement
    po, texts, template, y_str, y_all = opts.prompt, s["texts"], s["template"], s["y_str"], s["y_all"]
    ft = opts.finetune.resolved(NAME)
    fctx = job.fold_context(label)
    seed = loop.seed_of(opts.protocol.seed, tag)
    fit_idx, val_idx = job.carve(train_idx)
    loop.seed_torch(seed)  # the adapters' initial weights
    fctx.progress(0, 1, "loading model")
    net, tokenizer, identity, kind, config, _missing = load_lm_model(job.model, placement)
    for param in net.parameters():
        param.requires_grad_(False)
    trained = get_peft_model(net, lora_config(net, ft, "CAUSAL_LM", []))
    lm = as_lm(job.identity["name"], trained.get_base_model(), tokenizer, identity, placement, config)
    scorer = Scorer(lm, classes, template, po.verbalizers, opts.embedding.max_length, s["chat"])
    if "ids" not in s:
        fctx.progress(0, len(texts), "tokenising")
        s["ids"], s["n_answer"], s["n_truncated"] = sequences(scorer, texts, y_all)
    ids, n_answer = s["ids"], s["n_answer"]
    lengths = np.asarray([len(x) for x in ids])
    weights = class_weights(y_all[fit_idx], len(classes), ft.class_weighted_loss)
    w_all = (weights if weights is not None else torch.ones(len(classes)))[torch.from_numpy(y_all)]

    def loss_fn(input_ids, mask, batch):
        labels = answer_labels(input_ids, lengths[batch], n_answer[batch])
        nll = answer_nll(trained, input_ids, mask, labels)
        w = w_all[batch].to(nll.device)
        return (nll * w).sum() / w.sum()

    def validate() -> dict:
        val_scorer = Scorer(lm, classes, template, po.verbalizers, opts.embedding.max_length, s["chat"])  # (no stale KV cache)
        with loop.autocast(placement):
            sums = val_scorer.token_logprobs([texts[i] for i in val_idx], ctx=fctx, stage="validating")
            scored = {int(i): sums[r] for r, i in enumerate(val_idx)}
            prior = tuned_prior(val_scorer, texts, y_str, classes, val_idx, opts, 0, 0, scored)
            proba = softmax(val_scorer.scores(sums, po.scoring, prior))
        y_val = y_all[val_idx]
        f1 = float(f1_score(y_val, proba.argmax(1), average="macro", labels=list(range(len(classes))), zero_division=0))
        loss = float(-np.mean(sums[np.arange(len(val_idx)), y_val]))  # the right answer's NLL
        return {"val_macro_f1": f1, "val_loss": loss, "score": f1 - 1e-6 * loss}

    state = loop.train(
        trained, ids, fit_idx, loss_fn, validate, ft, seed, placement, pad_id=tokenizer.pad_token_id, key=f"{s['key']}-{tag}", ctx=fctx
    )
    with atomic_dir(staging(job) / tag) as tmp:
        trained.save_pretrained(tmp / "adapter")
    n_trainable = sum(q.numel() for q in trained.parameters() if q.requires_grad)
    training = loop.training_manifest(
        state,
        trainable_params=int(n_trainable),
        **lora_manifest(trained),
        n_truncated=s["n_truncated"],
        answer_tokens=[len(a) for a in scorer.label_ids],
    )
    rest = {k: v for k, v in identity.items() if k != "name"}
    job.identity = {"name": job.identity["name"], **rest, "model_type": config.model_type, "kind": kind}
    return {"training": training, "state": state, "n_fit": int(len(fit_idx)), "n_val": int(len(val_idx)), "val_index": val_idx.tolist()}


class InstructLora(Method):
    """For each fold: LoRA trained on its training letters' prompt -> answer sequences (epoch picked on a validation
    carve), its test letters scored by label likelihood; under cv the harness trains once more on every letter."""

    name = NAME
    title = "instruction tuning (LoRA), label likelihood"
    stage = "tuned"
    reads = READS
    predictor = PREDICTOR

    def setup(self, job: Job) -> None:
        entry = catalog.resolve(job.model)
        folder, job.state["base_identity"] = catalog.locate(entry)
        if catalog.model_kind(catalog.load_config(folder)) != "decoder":
            raise ClinBenchError(
                f"{entry.name} is an encoder; instruction tuning trains a generative (causal) model such as smollm2 to answer with the label."
            )
        job.identity = {"name": entry.name}
        job.state["chat"] = prompting.chat_of(folder, job.opts.prompt.chat_template, entry.name)

    def key(self, job: Job) -> str:
        s = job.state
        s["key"] = instruct_key(s["base_identity"], job.dataset.data_hash, job.opts, job.placement.dtype, job.plan.hash, s["chat"])
        return s["key"]

    def prepare(self, job: Job) -> None:
        po, ds = job.opts.prompt, job.dataset
        template, texts = prompting.with_columns(po.prompt_template, ds.letter_fields, ds.texts)  # columns -> {text}, as zero-shot
        y_str = job.y
        y_all = np.asarray([job.classes.index(v) for v in y_str])
        job.state.update(template=template, texts=texts, y_str=y_str, y_all=y_all, score_s=0.0, n_scored=0)

    def fit(self, job: Job, train: np.ndarray, tag: str, label: str) -> TunedLM:
        return TunedLM(job, tag, label, train_on(job, train, tag, label))

    def fold_done(self, job: Job, fitted: TunedLM, tag: str) -> None:
        fitted.scorer = None  # the merged model is freed; its adapter stays staged

    def save(self, job: Job, final: TunedLM, folder: Path) -> None:
        shutil.move(str(staging(job) / final.tag / "adapter"), folder / "adapter")
        (folder / PROMPT_FILE).write_text(json.dumps(final.stored()))

    def record(self, job: Job, final: TunedLM, fits: list[TunedLM]) -> dict:
        ft, p, s = job.opts.finetune.resolved(self.name), job.opts.protocol, job.state
        trainings = {} if job.plan.name != "cv" else {f.tag: f.trained for f in fits}
        stored = final.stored()
        return {
            "model": job.identity,
            "config": {**job.opts.to_dict(), "train": loop.train_config(ft, p.seed)},
            "prompt": {k: v for k, v in stored.items() if k not in ("prefix_ids", "prior_sums")} | {"demonstrations": None},
            **loop.folds_manifest(job.plan.name, final.trained, trainings),  # refit, training, fold_trainings
            "placement": {
                "device": job.placement.device,
                "dtype": job.placement.dtype,
                "weights": "float32 while training, then merged",
                "autocast": job.placement.dtype if job.placement.dtype == "bfloat16" else None,
            },
            "timings": {
                "train_s": sum(f.trained["state"]["train_s"] for f in (fits if final in fits else [final, *fits])),
                "score_s": s["score_s"],
                "s_per_letter": s["score_s"] / max(1, s["n_scored"]),
            },
        }

    def finish(self, job: Job, fits: list[TunedLM]) -> None:
        loop.discard_staging(job.state["key"], staging(job), [f.tag for f in fits])


def load_classifier(folder: Path, manifest: dict, placement: Placement):
    """The stored classifier's parts: (the base LM with the artifact's adapter merged, its prompt.json), hashes checked."""
    artifacts.verify_tree(folder, "adapter/")
    stored = json.loads(artifacts.verified_file(folder, PROMPT_FILE).read_text())
    return load_tuned_lm(manifest["model"]["name"], folder / "adapter", placement), stored


def same_base(lm: LM, recorded: dict) -> bool:
    """Whether the base model's files are those the adapter was trained on."""
    return all(lm.identity.get(k) == v for k, v in recorded.items() if k not in ("name", "model_type", "kind"))


METHOD = InstructLora()
