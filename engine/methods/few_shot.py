"""The `few-shot` method: k worked examples per label before each letter, then the label words scored as zero-shot does.

A fold's examples are drawn (seeded by the protocol seed, the repeat and the fold) from its training letters only,
label-balanced, each cut to its first tokens so the examples fit the context next to the letter (engine.methods.incontext:
`demonstrations`); their KV cache is computed once per fold and reused for every letter, and the prior is taken on
calibration letters drawn from the other training letters, after the same examples. With `with_letter_alone` each
letter is also scored without the examples (as zero-shot, with its own prior on the same calibration letters) and the
two prompts' log-probabilities are averaged.

Two labels with a threshold rule: the threshold must be chosen on training letters whose answers the prompt did not
show. So, only then, a validation set is carved from the fold's training letters (`Job.carve`: duplicate groups whole,
val_size of them); the examples and calibration letters are drawn from the rest, and the harness chooses the threshold
on the carve's probabilities. Every other task draws from every training letter, as before the harness, to the bit.
"""

from __future__ import annotations

import numpy as np

from engine.cache.storage import sha256_json
from engine.methods.base import Job
from engine.methods.incontext import Prompt, Prompted, demonstrations, prior_sums
from engine.options import groups

READS = (*groups.names("protocol", "prompt"), "max_length", *groups.names("decision"), "val_size")


class FewShot(Prompted):
    name = "few-shot"
    title = "generative model, few-shot (examples from the training letters)"
    reads = READS

    def key(self, job: Job) -> str:
        key = super().key(job)
        return sha256_json({"key": key, "val_size": job.opts.finetune.val_size})[:32] if job.needs_decision else key

    def fit(self, job: Job, train: np.ndarray, tag: str, label: str) -> Prompt:
        s, opts = job.state, job.opts
        repeat, fold = job.fold_numbers(tag)
        rows, val = job.carve(train) if job.needs_decision else (np.asarray(train), None)
        demos = demonstrations(s["scorer"], job.dataset, rows, opts, repeat, fold, s["texts"])
        pool = np.setdiff1d(rows, demos.rows)  # calibration letters: training letters that are not examples
        common = (s["scorer"], s["texts"], job.y, job.classes, pool, opts, repeat, fold)
        prior, prior_rows = prior_sums(*common, demos.ids)
        alone = opts.prompt.with_letter_alone
        zero_prior = prior_sums(*common)[0] if alone else None
        return Prompt(job, label, prior, prior_rows, demos=demos, alone=alone, zero_prior=zero_prior, decision_rows=val)

    def refit(self, job: Job) -> str:
        where = "every letter" if job.plan.name == "cv" else "the training split"
        return f"examples drawn from {where}" + (" but the validation carve (the threshold's)" if job.needs_decision else "")


METHOD = FewShot()
