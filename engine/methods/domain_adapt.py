"""The `domain-adapt` method: LoRA on the language-model objective over the training letters; it produces a model.

Masked LM for encoders (BERT masking, `mlm_probability` of the real tokens), causal LM for decoders;
the epoch is chosen on the validation letters' perplexity, and the test letters' perplexity is reported
before and after. Under `protocol: fixed` the dataset's own split is used (its training letters fit, less a validation
carve; its test letters are scored), otherwise a hold-out split.

When the dataset has reference answers (data option answer_column) and the model is a decoder, each training letter is
learnt followed by the answer prompt and its answer (never a test letter's answer), and the base and the tuned model
each write an answer to the test letters (engine.finetune.generation): ROUGE-L and BLEU against the references are
reported beside perplexity, and the written answers are kept in the artifact (generated.json), never logged.

The objective, perplexity and the adapter training are engine.finetune.lm_objective's (adapt-svc trains the same
adaptation per fold). The method makes a model, not a classifier: no folds, no decision; the harness's `produce`
(engine.methods.harness) plans, refuses letters an adapted model already read, looks the key up and seals around its
`build`. The merged model is saved under cache/models/adapted-*/ (with its adapter/ and the letters it read, so no
evaluation scores it on them) and the registry lists it as a feature extractor (engine.models.catalog.adapted_models).
"""

from __future__ import annotations

import json
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

from engine.cache.context import StepContext
from engine.cache.storage import models_dir, sha256_json
from engine.data.dataset import Dataset
from engine.evaluation import scoring
from engine.features import extract
from engine.finetune import generation, loop
from engine.finetune.lm_objective import perplexity, train_lm_adapter
from engine.finetune.loading import load_lm_model, lora_manifest
from engine.methods.base import Built, Job, Method
from engine.models import catalog
from engine.options.groups import Options, key_dict, names
from engine.protocols import plans
from engine.protocols.plans import Plan


def _write(net, tokenizer, dataset: Dataset, test, opts: Options, placement, ctx: StepContext, which: str):
    """{"written", "scores", "seconds"}: greedy answers of `net` to the first generate_letters test letters."""
    t = time.perf_counter()
    test = test[: opts.domain.generate_letters]
    prompts = generation.prompt_ids(tokenizer, [dataset.texts[i] for i in test], opts.domain.answer_prompt, opts.embedding.max_length)
    written = generation.generate(
        net,
        tokenizer,
        prompts,
        placement,
        max_new_tokens=opts.domain.generate_tokens,
        batch_size=32 if placement.device == "cuda" else 8,
        progress=lambda done, total: ctx.progress(done, total, f"answers written ({which} model)"),
    )
    scores = generation.scores(written, [dataset.answers[i] for i in test])
    return {"written": written, "scores": scores, "seconds": time.perf_counter() - t}


class DomainAdapt(Method):
    name = "domain-adapt"
    title = "domain adaptation (LM objective)"
    stage = "tuned"
    reads = ("seed", "test_size", "near_duplicates", "max_length", *names("finetune"), *names("domain"))  # (protocol: fixed or not)
    produces = "model"
    artifact = "domain-adaptation"
    label_sets = True  # it reads the letters, not their labels

    def plan(self, dataset: Dataset, opts: Options) -> Plan:
        """The dataset's own split under protocol fixed, else one hold-out split (its test letters: the perplexity's)."""
        p = opts.protocol
        return plans.plan(dataset, p if p.protocol == "fixed" else replace(p, protocol="holdout"))

    def setup(self, job: Job) -> None:
        entry = catalog.resolve(job.model)
        job.identity = {"name": entry.name}
        job.state.update(entry=entry, located=catalog.locate(entry)[1])

    def key(self, job: Job) -> str:
        answers = job.dataset.answers  # (decoders only learn and write them; the key names them whenever the data has them)
        extra = {
            "domain": key_dict(job.opts.domain),
            "plan": job.plan.hash,
            **({"answers": sha256_json(answers), "generation": generation.VERSION} if answers else {}),
        }
        job.state["key"] = loop.training_key(
            self.name, job.state["located"], job.dataset.data_hash, job.opts, job.placement.dtype, extra=extra
        )
        return job.state["key"]

    def folder(self, job: Job, key: str) -> Path:
        return models_dir() / f"adapted-{catalog.safe_name(job.state['entry'].name)}-{key[:12]}"

    def build(self, job: Job) -> Built:
        """The adaptation: perplexity of the test letters before, LoRA on the fitting letters (epoch chosen on the carve's
        perplexity), perplexity after; with reference answers and a decoder, answers written before and after."""
        dataset, opts, placement, ctx, key = job.dataset, job.opts, job.placement, job.ctx, job.state["key"]
        p, mlm, answers = opts.protocol, opts.domain.mlm_probability, dataset.answers
        split = job.plan.folds[0]
        fit_idx, val_idx = job.carve(split.train)
        ctx.progress(0, 1, "loading model")
        loop.seed_torch(loop.seed_of(p.seed, "adapt"))
        net, tokenizer, identity, kind, config, head = load_lm_model(job.model, placement)
        job.identity = {**identity, "kind": kind, "model_type": config.model_type}
        ids, n_truncated = extract.tokenize(tokenizer, dataset.texts, opts.embedding.max_length)
        ctx.progress(0, 1, "perplexity before")
        net.eval()
        ppl_before = perplexity(net, kind, ids, split.test, tokenizer, placement, seed=p.seed, mlm_probability=mlm)
        writes = answers is not None and kind == "decoder"
        if writes:  # training letters are learnt with their answers; test letters' answers are only references
            seen = np.concatenate([fit_idx, val_idx])
            texts, said = [dataset.texts[i] for i in seen], [answers[i] for i in seen]
            train_ids = list(ids)
            for i, x in zip(seen, generation.answer_ids(tokenizer, texts, said, opts.domain.answer_prompt, opts.embedding.max_length)):
                train_ids[i] = x
            before = _write(net, tokenizer, dataset, split.test, opts, placement, ctx, "base")
        else:
            train_ids = ids
        tuned, state = train_lm_adapter(
            net, kind, tokenizer, train_ids, fit_idx, val_idx, opts, self.name, placement, seed=p.seed, key=key, head=head, ctx=ctx
        )
        ctx.progress(0, 1, "perplexity after")
        ppl_after = perplexity(tuned, kind, ids, split.test, tokenizer, placement, seed=p.seed, mlm_probability=mlm)
        name = f"{catalog.safe_name(job.state['entry'].name)}-adapted-{key[:8]}"
        m = {
            "perplexity_before": ppl_before,
            "perplexity_after": ppl_after,
            "perplexity_on": "test split letters",
            "adapted_model": name,
            "head_from_checkpoint": not head,
        }
        timings = {"train_s": state["train_s"]}
        written = None
        if writes:
            after = _write(tuned, tokenizer, dataset, split.test, opts, placement, ctx, "tuned")
            m |= {f"{k}_before": v for k, v in before["scores"].items()} | {f"{k}_after": v for k, v in after["scores"].items()}
            m |= {"generated_letters": len(before["written"]), "answers_from": dataset.options["answer_column"]}
            timings |= {"generate_before_s": before["seconds"], "generate_after_s": after["seconds"]}
            written = [
                {"row": int(dataset.rows[i] if dataset.rows is not None else i), "reference": answers[i], "base": b, "tuned": t}
                for i, b, t in zip(split.test[: len(before["written"])], before["written"], after["written"])
            ]
        record = {
            "name": name,
            "config": {**opts.to_dict(), "train": loop.train_config(opts.finetune.resolved(self.name), p.seed)},
            "objective": "masked LM" if kind == "encoder" else "causal LM",
            "split": {"n_fit": int(len(fit_idx)), "n_val": int(len(val_idx)), "n_test": int(len(split.test))},
            # the letters the adaptation read (training and validation), so no evaluation scores it on them (scoring.require_unseen)
            "seen_letters": scoring.letter_hashes([dataset.texts[i] for i in np.concatenate([fit_idx, val_idx])]),
            "training": loop.training_manifest(state, head_modules=head, n_truncated=n_truncated, **lora_manifest(tuned)),
            "placement": {"device": placement.device, "dtype": placement.dtype},
            "timings": timings,
        }

        def write(tmp: Path) -> None:
            tuned.save_pretrained(tmp / "adapter")
            merged = tuned.merge_and_unload()
            merged.save_pretrained(tmp)
            tokenizer.save_pretrained(tmp)
            if written is not None:  # the written answers, for reading them (local cache only; never logged)
                (tmp / "generated.json").write_text(json.dumps(written, indent=1, ensure_ascii=False), encoding="utf-8")

        return Built(m, record, write)

    def finish(self, job: Job, fits: list) -> None:
        loop.checkpoint_path(job.state["key"]).unlink(missing_ok=True)


METHOD = DomainAdapt()
