"""The `instruct-lora` step: instruction tuning of a causal LM with LoRA, then classification by label likelihood.

Each training letter becomes one sequence: the zero-shot prompt around the letter (engine.prompting: the template, the
letter cut so that prompt + longest label fit `max_length`) followed by its label's words; the loss is the summed
negative log-likelihood of the answer tokens only (every other position is masked, -100), class-weighted by default.
LoRA adapters (peft, CAUSAL_LM) on the attention projections are trained by engine.finetune.loop (seeded batches,
checkpoints, cancel/resume, live curves); the epoch is chosen on a validation carve of the fold's training letters by
their macro-F1 under label likelihood. The fold's test letters are then scored exactly as zero-shot scores them
(scoring, contextual calibration: the prompt options) by the base model with the saved adapter merged, the same way
the stored classifier is loaded (`load_tuned_lm`), so it reproduces the step's predictions.

Under cv one more training on every letter gives the stored classifier; under holdout/fixed the fold's model is it.
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
from engine.cache.artifacts import StepResult
from engine.cache.context import StepContext, ensure
from engine.cache.storage import atomic_dir, evaluations_dir
from engine.data.dataset import Dataset
from engine.errors import ClinBenchError
from engine.evaluation import overlap, scoring
from engine.finetune import loop
from engine.finetune.heads import class_weights
from engine.finetune.loading import load_lm_model, lora_config, lora_manifest
from engine.methods import incontext, prompting
from engine.methods.base import StepKind
from engine.methods.incontext import PROMPT_FILE
from engine.methods.prompting import LM, Scorer, softmax
from engine.models import catalog
from engine.models.devices import Placement, choose
from engine.options import groups
from engine.options.groups import Options
from engine.protocols import plans

VERSION = 1
METHOD = "instruct-lora"
PREDICTOR = "tuned-lm"
PROMPT_READS = tuple(n for n in groups.names("prompt") if n not in ("k_shot", "with_letter_alone"))  # no examples in the prompt


def instruct_key(identity: dict, data_hash: str, opts: Options, dtype: str, plan_hash: str) -> str:
    """The cache key: the training's (model, letters, fine-tuning options, max_length, seed) plus the prompt options it
    reads, the prompt defaults and the plan (its hash covers the folds and labels_per_class)."""
    prompt = {n: getattr(opts.prompt, n) for n in PROMPT_READS}
    extra = {
        "instruct": VERSION,
        "prompt": prompt,
        "defaults": [prompting.DEFAULT_TEMPLATE, prompting.CONTENT_FREE],
        "plan": plan_hash,
    }
    return loop.training_key(METHOD, identity, data_hash, opts, dtype, extra=extra)


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


def instruct_step(dataset: Dataset, model: str, method: str, opts: Options, ctx: StepContext | None = None) -> StepResult:
    """For each fold of the plan: train LoRA on its training letters' prompt -> answer sequences (epoch picked on a
    validation carve), score its test letters by label likelihood; under cv, train once more on every letter."""
    import torch
    from peft import get_peft_model
    from sklearn.metrics import f1_score

    ctx = ensure(ctx)
    t_start = time.perf_counter()
    placement = choose()
    classes, po, p = dataset.classes, opts.prompt, opts.protocol
    template, texts = prompting.with_columns(po.prompt_template, dataset.letter_fields, dataset.texts)  # columns -> {text}, as zero-shot
    plan = plans.plan(dataset, p, method)
    entry = catalog.resolve(model)
    scoring.require_unseen(entry, dataset, plan)
    model_folder, base_identity = catalog.locate(entry)
    if catalog.model_kind(catalog.load_config(model_folder)) != "decoder":
        raise ClinBenchError(
            f"{entry.name} is an encoder; instruction tuning trains a generative (causal) model such as smollm2 to answer with the label."
        )
    key = instruct_key(base_identity, dataset.data_hash, opts, placement.dtype, plan.hash)
    folder = evaluations_dir() / key
    if hit := artifacts.stored(folder, entry.name, method):
        return hit
    ft = opts.finetune.resolved(method)
    staging = loop.checkpoint_path(key).with_suffix(".folds")
    y_str = np.asarray(dataset.labels, dtype=str)
    y_all = np.asarray([classes.index(v) for v in y_str])
    seqs: dict = {}

    def train_on(train_idx: np.ndarray, tag: str, label: str) -> dict:
        """Train fresh adapters on `train_idx` (validation carved from it), seeded by (seed, tag); save under staging/tag."""
        fctx = ctx.labelled(label)
        seed = loop.seed_of(p.seed, tag)
        fit_idx, val_idx = plans.carve(dataset, train_idx, plan.groups, ft.val_size, p.seed)
        loop.seed_torch(seed)  # the adapters' initial weights
        fctx.progress(0, 1, "loading model")
        net, tokenizer, identity, kind, config, _missing = load_lm_model(model, placement)
        for param in net.parameters():
            param.requires_grad_(False)
        trained = get_peft_model(net, lora_config(net, ft, "CAUSAL_LM", []))
        lm = as_lm(entry.name, trained.get_base_model(), tokenizer, identity, placement, config)
        scorer = Scorer(lm, classes, template, po.verbalizers, opts.embedding.max_length)
        if not seqs:
            fctx.progress(0, len(texts), "tokenising")
            seqs["ids"], seqs["n_answer"], seqs["n_truncated"] = sequences(scorer, texts, y_all)
        ids, n_answer = seqs["ids"], seqs["n_answer"]
        lengths = np.asarray([len(x) for x in ids])
        weights = class_weights(y_all[fit_idx], len(classes), ft.class_weighted_loss)
        w_all = (weights if weights is not None else torch.ones(len(classes)))[torch.from_numpy(y_all)]

        def loss_fn(input_ids, mask, batch):
            labels = answer_labels(input_ids, lengths[batch], n_answer[batch])
            nll = answer_nll(trained, input_ids, mask, labels)
            w = w_all[batch].to(nll.device)
            return (nll * w).sum() / w.sum()

        def validate() -> dict:
            val_scorer = Scorer(lm, classes, template, po.verbalizers, opts.embedding.max_length)  # (no stale KV cache)
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
            trained, ids, fit_idx, loss_fn, validate, ft, seed, placement, pad_id=tokenizer.pad_token_id, key=f"{key}-{tag}", ctx=fctx
        )
        with atomic_dir(staging / tag) as tmp:
            trained.save_pretrained(tmp / "adapter")
        n_trainable = sum(q.numel() for q in trained.parameters() if q.requires_grad)
        training = loop.training_manifest(
            state,
            trainable_params=int(n_trainable),
            **lora_manifest(trained),
            n_truncated=seqs["n_truncated"],
            answer_tokens=[len(a) for a in scorer.label_ids],
        )
        ident = {"name": entry.name, **{k: v for k, v in identity.items() if k != "name"}, "model_type": config.model_type, "kind": kind}
        return {
            "identity": ident,
            "training": training,
            "state": state,
            "n_fit": int(len(fit_idx)),
            "n_val": int(len(val_idx)),
            "val_index": val_idx.tolist(),
        }

    trainings: dict[str, dict] = {}
    timing = {"score_s": 0.0, "n_scored": 0}
    final_words: dict = {}
    priors: dict = {}

    def fit_predict(fold):
        tag = f"r{fold.repeat}f{fold.fold}"
        label = scoring.fold_label(plan, fold)
        trainings[tag] = train_on(fold.train, tag, label)
        t0 = time.perf_counter()
        lm = load_tuned_lm(model, staging / tag / "adapter", placement)  # as the stored classifier loads it
        scorer = Scorer(lm, classes, template, po.verbalizers, opts.embedding.max_length)
        final_words.update(template=scorer.template, words=scorer.words)
        prior = priors[tag] = tuned_prior(scorer, texts, y_str, classes, trainings[tag]["val_index"], opts, fold.repeat, fold.fold)
        proba, _ = label_scores(scorer, [texts[i] for i in fold.test], po, prior, ctx.labelled(label), "scoring test letters")
        timing["score_s"] += time.perf_counter() - t0
        timing["n_scored"] += len(fold.test)
        return proba

    oof = scoring.cross_predict(plan, fit_predict, len(classes), ctx)
    m = scoring.score(dataset, plan, oof, n_boot=p.n_boot, seed=p.seed)
    if plan.name == "cv":
        ctx.check_stop("Cancelled before training on every letter.")
        final_tag, final = "all", train_on(plan.final_train, "all", "all letters")
        scorer = Scorer(
            load_tuned_lm(model, staging / "all" / "adapter", placement), classes, template, po.verbalizers, opts.embedding.max_length
        )
        priors["all"] = tuned_prior(scorer, texts, y_str, classes, final["val_index"], opts, -1, -1)
    else:
        final_tag, final = "r0f0", trainings.pop("r0f0")
    prior = priors[final_tag]
    stored = {
        "template": final_words["template"],
        "classes": classes,
        "words": final_words["words"],
        "scoring": po.scoring,
        "calibration": po.calibration,
        "calibrate_on": po.calibrate_on,
        "prior_sums": None if prior is None else np.asarray(prior).tolist(),
        "max_length": opts.embedding.max_length,
        "prefix_ids": [],
    }
    trained = overlap.hashes([dataset.texts[i] for i in plan.final_train])  # the refit's letters (cv) or the training split's
    train_s = final["state"]["train_s"] + sum(t["state"]["train_s"] for t in trainings.values())
    manifest = {
        "kind": "evaluation",
        "key": key,
        "model": final["identity"],
        "method": method,
        "method_title": INSTRUCT_LORA.title,
        "stage": INSTRUCT_LORA.stage,
        "predictor": PREDICTOR,
        "config": {**opts.to_dict(), "train": loop.train_config(ft, p.seed)},
        "prompt": {k: v for k, v in stored.items() if k not in ("prefix_ids", "prior_sums")} | {"demonstrations": None},
        "data": artifacts.data_manifest(dataset),
        "protocol": plan.manifest(),
        **loop.folds_manifest(plan.name, final, trainings),  # refit, training, fold_trainings
        "placement": {
            "device": placement.device,
            "dtype": placement.dtype,
            "weights": "float32 while training, then merged",
            "autocast": placement.dtype if placement.dtype == "bfloat16" else None,
        },
        "timings": {
            "train_s": train_s,
            "score_s": timing["score_s"],
            "s_per_letter": timing["score_s"] / max(1, timing["n_scored"]),
            "total_s": time.perf_counter() - t_start,
        },
        **overlap.manifest_part(trained),
        **artifacts.provenance(m),  # versions, environment, metrics, created
    }

    def write_files(tmp):
        shutil.move(str(staging / final_tag / "adapter"), tmp / "adapter")
        (tmp / PROMPT_FILE).write_text(json.dumps(stored))
        scoring.write_predictions(tmp, dataset, plan, oof)
        overlap.write(tmp, trained)

    folder.parent.mkdir(parents=True, exist_ok=True)
    manifest = artifacts.write(folder, manifest, write_files)
    loop.discard_staging(key, staging, trainings)
    ctx.progress(1, 1, "done")
    return StepResult(entry.name, method, m, str(folder), False, manifest)


def load_classifier(folder: Path, manifest: dict, placement: Placement):
    """The stored classifier's parts: (the base LM with the artifact's adapter merged, its prompt.json), hashes checked."""
    artifacts.verify_tree(folder, "adapter/")
    stored = json.loads(artifacts.verified_file(folder, PROMPT_FILE).read_text())
    return load_tuned_lm(manifest["model"]["name"], folder / "adapter", placement), stored


def same_base(lm: LM, recorded: dict) -> bool:
    """Whether the base model's files are those the adapter was trained on."""
    return all(lm.identity.get(k) == v for k, v in recorded.items() if k not in ("name", "model_type", "kind"))


READS = (*groups.names("protocol"), *PROMPT_READS, "max_length", *groups.names("finetune"))
INSTRUCT_LORA = StepKind(METHOD, "instruction tuning (LoRA), label likelihood", "tuned", instruct_step, READS)
KINDS = {INSTRUCT_LORA.name: INSTRUCT_LORA}
