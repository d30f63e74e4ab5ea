"""The `zero-shot` method: a generative model answers with the label whose words it finds most likely after the prompt.

Nothing is trained (engine.methods.prompting scores the label words; engine.methods.incontext holds what zero-shot and
few-shot share). Every letter the plan tests is scored once, before the folds (`prepare`); under cv the folds read their
test letters' probabilities from those scores, so a repeat adds nothing (`cv_repeats` defaults to 1). What a fold
"fits" is its calibration: the prior drawn from its training letters (or content-free inputs), subtracted from every
score. zero-shot reads no training letter otherwise, so it drops `labels_per_class` (`options`).

The harness decides as for every method: on two labels with a threshold rule (engine.options.groups.DecisionOptions)
the threshold is chosen on the fold's training letters, none of whose answers the model read; they are scored by the
same prompt and prior (under cv each letter is scored once anyway; under holdout this scores the training letters
too, about 1 / test_size times the letters of the test alone).
"""

from __future__ import annotations

import time

import numpy as np

from engine.methods.base import Job
from engine.methods.incontext import Prompt, Prompted, letter_sums, prior_sums
from engine.options import groups
from engine.options.groups import Options

READS = tuple(
    r
    for r in (*groups.names("protocol", "prompt"), "max_length", *groups.names("decision"))
    if r not in ("k_shot", "with_letter_alone", "labels_per_class")
)


class ZeroShot(Prompted):
    name = "zero-shot"
    title = "generative model, zero-shot (label likelihood)"
    reads = READS

    def options(self, opts: Options) -> Options:
        return opts.replace(labels_per_class=None)  # it reads no training letter

    def prepare(self, job: Job) -> None:
        super().prepare(job)
        t0 = time.perf_counter()
        tested = np.unique(np.concatenate([f.test for f in job.plan.folds]))
        letter_sums(job, tested)  # every tested letter once, shared by the folds
        job.state.update(score_s=time.perf_counter() - t0, n_scored=len(tested))

    def fit(self, job: Job, train: np.ndarray, tag: str, label: str) -> Prompt:
        repeat, fold = job.fold_numbers(tag)
        s = job.state
        prior, rows = prior_sums(s["scorer"], s["texts"], job.y, job.classes, train, job.opts, repeat, fold, scored=s["sums"])
        return Prompt(job, label, prior, rows, decision_rows=np.asarray(train))

    def refit(self, job: Job) -> str:
        return "no training: the same model scores every letter"


METHOD = ZeroShot()
