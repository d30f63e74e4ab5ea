"""The zero-shot and few-shot steps: a generative model classifies by the likelihood of each label's words (engine.prompting).

`zero-shot` trains nothing: every letter the plan tests is scored once by the same model (under cv the folds' predictions
are read from those scores, so a repeat adds nothing: `cv_repeats` defaults to 1), calibrated by a content-free prior
that reads no letter. `few-shot` puts k worked examples per label before each letter: drawn (seeded by the protocol seed,
the repeat and the fold) from the fold's *training* letters only, each cut to its first tokens so the examples fit the
context next to the letter, in label-balanced rounds; the examples' KV cache is computed once per fold and reused for
every test letter, and the prior is taken on the same examples. Each letter is also scored without the examples (as
zero-shot, calibrated on the same letters) and the two prompts' log-probabilities are averaged (option with_letter_alone: a tiny
model copies labels from examples; measured below). The stored classifier (`PromptClassifier`, predictor
`prompted-lm`) holds the prompt, the label words and, for few-shot, the examples' token ids and both priors; its manifest names the
rows they came from (under cv drawn from every letter; under holdout those of the training split, as scored).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from engine.cache import artifacts
from engine.cache.artifacts import StepResult
from engine.cache.context import StepContext, ensure
from engine.cache.storage import evaluations_dir, sha256_json
from engine.data.dataset import Dataset
from engine.evaluation import overlap, scoring
from engine.methods import prompting
from engine.methods.base import StepKind, StoredClassifier
from engine.methods.prompting import LM, Scorer, load_lm, softmax
from engine.models import catalog
from engine.models.devices import choose
from engine.options import groups
from engine.options.groups import Options
from engine.protocols import plans

VERSION = 2  # 2: few-shot averages its examples' prompt with the prompt without examples (with_letter_alone)
PROMPT_FILE = "prompt.json"
# Most letter tokens per example. Measured on 40 training letters of the default split (SmolLM2, zero-shot 0.54 there):
# 1 example per label cut to 48 tokens 0.12, cut to 160 tokens 0.32; 2 per label at 96 tokens 0.11 on the test letters. A tiny
# model copies labels from short examples; few long ones work best, so the default (as many as fit) is 1 per label at 256.
DEMO_TOKENS = 256
DEMO_CONTEXT = 2048  # most tokens a few-shot prompt uses (examples + letter): long prefixes cost attention on a CPU
# Few-shot averages two prompts' calibrated label log-probabilities: the letter after the examples, and the letter alone
# (each with its own prior on the same calibration letters). Chosen on 60 training letters of the default split (12 per
# label; examples and calibration letters from the other training letters, never a test letter), SmolLM2, macro-F1:
# the examples' prompt alone 0.302, the letter alone 0.525, both averaged 0.527 (one random draw; 10 calibration letters
# per label instead of 5: 0.265 alone). The examples nearest their label's tf-idf centroid instead of a random draw: 0.340
# vs 0.395 on 40 letters, not kept. The tiny model copies labels from examples; the prompt without them keeps it on the
# letter. Costs ~1.5x the examples' prompt alone (one more pass over the letters, without the prefix). The option
# with_letter_alone (on by default) turns it off.


@dataclass
class Demonstrations:
    rows: list[int]  # dataset positions, in prompt order
    labels: list[str]
    ids: list[int]  # the examples' tokens, concatenated (what the prompt starts with)
    k: int
    letter_tokens: int


def k_per_label(scorer: Scorer, n_classes: int, k_shot: int | None) -> tuple[int, int]:
    """(examples per label, letter tokens per example): k_shot at DEMO_TOKENS each, shortened to fit; none: as many as fit."""
    room = min(scorer.lm.context, DEMO_CONTEXT) - scorer.max_length - len(scorer.special)
    frame = len(scorer.head_ids) + len(scorer.tail_ids) + len(scorer.sep_ids) + max(len(ids) for ids in scorer.label_ids)
    per_example = room // n_classes
    k = k_shot or max(1, per_example // (frame + DEMO_TOKENS))
    tokens = min(DEMO_TOKENS, room // (n_classes * k) - frame)
    if tokens < 8:
        raise ValueError(
            f"{k} examples per label do not fit next to a {scorer.max_length}-token letter in {min(scorer.lm.context, DEMO_CONTEXT)} tokens; "
            "lower k_shot or max_length."
        )
    return k, tokens


def draw(labels: np.ndarray, train: np.ndarray, classes: list[str], k: int, seed: int, repeat: int, fold: int, salt: int = 0) -> list[int]:
    """k training rows per label (all a label has, when fewer), seeded by (seed, repeat, fold[, salt]), in label-balanced
    rounds: one example of every label per round, the labels shuffled within each round."""
    rng = np.random.default_rng([seed, repeat + 1, fold + 1] + ([salt] if salt else []))
    picked = {}
    for c in classes:
        pool = np.sort(train[labels[train] == c])
        picked[c] = list(rng.choice(pool, size=min(k, len(pool)), replace=False)) if len(pool) else []
    order = []
    for r in range(k):
        round_ = [picked[c][r] for c in classes if r < len(picked[c])]
        order.extend(int(i) for i in rng.permutation(round_))
    return order


def demonstrations(
    scorer: Scorer, dataset: Dataset, train: np.ndarray, opts: Options, repeat: int, fold: int, texts: list[str] | None = None
) -> Demonstrations:
    """The fold's worked examples; `texts`: the letters as the prompt lays them out (default: the dataset's)."""
    texts = dataset.texts if texts is None else texts
    k, tokens = k_per_label(scorer, len(dataset.classes), opts.prompt.k_shot)
    y = np.asarray(dataset.labels, dtype=str)
    rows = draw(y, np.asarray(train), dataset.classes, k, opts.protocol.seed, repeat, fold)
    pos = {c: i for i, c in enumerate(dataset.classes)}
    ids = [t for r in rows for t in scorer.demonstration_ids(texts[r], pos[y[r]], tokens)]
    return Demonstrations(rows, [str(y[r]) for r in rows], ids, k, tokens)


CALIBRATION_SALT = 104_729  # keeps the calibration letters' draw apart from the examples'


def log_softmax(scores: np.ndarray) -> np.ndarray:
    z = scores - scores.max(axis=1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=1, keepdims=True))


def ensemble(scorer: Scorer, parts, scoring: str) -> np.ndarray:
    """Probabilities from prompts' (label sums, prior sums): each prompt's calibrated log-probabilities, averaged, renormalised."""
    return softmax(np.mean([log_softmax(scorer.scores(s, scoring, prior)) for s, prior in parts], axis=0))


def prior_sums(scorer: Scorer, texts, labels, classes, pool, opts: Options, repeat: int, fold: int, prefix=None, scored=None):
    """(summed label log-likelihoods the prior is the mean of, the rows they came from) or (None, []) without calibration:
    content-free inputs, or `calibration_letters` letters per label drawn (seeded) from `pool` (training letters that are
    not examples: never a test letter), scored after `prefix`; `scored` (row -> sums) saves scoring a letter twice."""
    po = opts.prompt
    if not po.calibration:
        return None, []
    if po.calibrate_on == "content-free":
        return scorer.prior(prefix), []
    rows = draw(
        np.asarray(labels, dtype=str), np.asarray(pool), classes, po.calibration_letters, opts.protocol.seed, repeat, fold, CALIBRATION_SALT
    )
    if scored is not None and all(r in scored for r in rows):
        return np.array([scored[r] for r in rows]), rows
    return scorer.token_logprobs([texts[r] for r in rows], prefix, stage="calibration letters"), rows


def evaluation_key(identity: dict, method: str, opts: Options, plan_hash: str, dtype: str) -> str:
    """The cache key of a prompted evaluation: the model, the prompt options it reads, max_length, the folds, the protocol."""
    prompt = groups.key_dict(opts.prompt)
    if method == "zero-shot":
        prompt.pop("k_shot")
        prompt.pop("with_letter_alone")
    p = opts.protocol
    return sha256_json(
        {
            "v": VERSION,
            "method": method,
            "model": identity,
            "prompt": prompt,
            "defaults": [prompting.DEFAULT_TEMPLATE, prompting.CONTENT_FREE, DEMO_TOKENS, DEMO_CONTEXT]
            + ([1] if method == "few-shot" else []),  # (2: the letter-alone prompt exists; the option says whether it is used)
            "max_length": opts.embedding.max_length,
            "dtype": dtype,
            "plan": plan_hash,
            "n_boot": p.n_boot,
            "seed": p.seed,
        }
    )[:32]


def prompted_step(dataset: Dataset, model: str, method: str, opts: Options, ctx: StepContext | None = None) -> StepResult:
    """Score the plan's test letters with the prompted model (few-shot: the fold's examples first), store it all."""
    ctx = ensure(ctx)
    t_start = time.perf_counter()
    kind = KINDS[method]
    opts = opts.replace(labels_per_class=None) if method == "zero-shot" else opts  # it reads no training letter
    plan = plans.plan(dataset, opts.protocol, method)
    scoring.require_unseen(catalog.resolve(model), dataset, plan)
    placement = choose()
    lm = load_lm(model, placement)
    identity = {"name": lm.name, **{k: v for k, v in lm.identity.items() if k != "name"}}
    key = evaluation_key(identity, method, opts, plan.hash, placement.dtype)
    folder = evaluations_dir() / key
    if hit := artifacts.stored(folder, lm.name, method):
        return hit
    po = opts.prompt
    template, texts = prompting.with_columns(po.prompt_template, dataset.letter_fields, dataset.texts)  # columns -> {text}
    scorer = Scorer(lm, dataset.classes, template, po.verbalizers, opts.embedding.max_length)
    classes = dataset.classes
    fold_demos: list[Demonstrations] = []
    t_score = time.perf_counter()
    y = np.asarray(dataset.labels, dtype=str)
    priors: list = []  # each fold's (prior sums, calibration rows); the stored classifier keeps the first, or under cv its own
    zero_priors: list = []  # few-shot with with_letter_alone: each fold's prior of the prompt without examples (same letters)
    scored = None
    if method == "zero-shot":
        tested = np.unique(np.concatenate([f.test for f in plan.folds]))
        sums = np.zeros((len(texts), len(classes)))
        sums[tested] = scorer.token_logprobs([texts[i] for i in tested], ctx=ctx)
        scored = {int(i): sums[i] for i in tested}

        def fit_predict(fold):
            priors.append(prior_sums(scorer, texts, y, classes, fold.train, opts, fold.repeat, fold.fold, scored=scored))
            prior = priors[-1][0]
            return softmax(scorer.scores(sums[fold.test], po.scoring, prior))

    else:

        def fit_predict(fold):
            demos = demonstrations(scorer, dataset, fold.train, opts, fold.repeat, fold.fold, texts)
            fold_demos.append(demos)
            stage = f"scoring letters {scoring.fold_label(plan, fold)}".strip()
            test = [texts[i] for i in fold.test]
            s = scorer.token_logprobs(test, demos.ids, ctx, stage)
            pool = np.setdiff1d(fold.train, demos.rows)
            priors.append(prior_sums(scorer, texts, y, classes, pool, opts, fold.repeat, fold.fold, demos.ids))
            parts = [(s, priors[-1][0])]
            if po.with_letter_alone:  # the same letters without the examples, calibrated on the same calibration letters
                zero_priors.append(prior_sums(scorer, texts, y, classes, pool, opts, fold.repeat, fold.fold)[0])
                parts.append((scorer.token_logprobs(test, None, ctx, stage + " without examples"), zero_priors[-1]))
            return ensemble(scorer, parts, po.scoring)

    oof = scoring.cross_predict(plan, fit_predict, len(classes), ctx)
    score_s = time.perf_counter() - t_score
    m = scoring.score(dataset, plan, oof, n_boot=opts.protocol.n_boot, seed=opts.protocol.seed)
    final, (prior, prior_rows) = None, priors[0]
    zero_prior = zero_priors[0] if zero_priors else None
    if method == "few-shot":  # the stored classifier's examples: every letter under cv, the training split under holdout
        final = fold_demos[0] if plan.name != "cv" else demonstrations(scorer, dataset, plan.final_train, opts, -1, -1, texts)
    if plan.name == "cv":  # the stored classifier's prior: drawn from every letter (not its examples)
        pool = np.setdiff1d(plan.final_train, final.rows if final else [])
        prior, prior_rows = prior_sums(scorer, texts, y, classes, pool, opts, -1, -1, final.ids if final else None, scored)
        if zero_priors:
            zero_prior = prior_sums(scorer, texts, y, classes, pool, opts, -1, -1)[0]
    stored = {
        "template": scorer.template,
        "classes": classes,
        "words": scorer.words,
        "scoring": po.scoring,
        "calibration": po.calibration,
        "calibrate_on": po.calibrate_on,
        "prior_sums": None if prior is None else np.asarray(prior).tolist(),
        "max_length": scorer.max_length,
        "prefix_ids": final.ids if final else [],
        "with_zero_shot": bool(zero_priors),  # few-shot: also the prompt without examples, averaged (with_letter_alone)
        "zero_prior_sums": None if zero_prior is None else np.asarray(zero_prior).tolist(),
    }
    demo_record = None
    if final is not None:
        demo_record = {
            "k_per_label": final.k,
            "letter_tokens": final.letter_tokens,
            "rows": scoring.input_rows(dataset, final.rows),
            "labels": final.labels,
            "prefix_tokens": len(final.ids),
            "fold_rows": [scoring.input_rows(dataset, d.rows) for d in fold_demos],
        }
    read = [*(final.rows if final is not None else []), *(prior_rows if prior_rows is not None else [])]
    trained = overlap.hashes([dataset.texts[int(i)] for i in read])  # its examples and calibration letters
    n_scored = len(oof.test_index) if method == "few-shot" else len(np.unique(oof.test_index))
    manifest = {
        "kind": "evaluation",
        "key": key,
        "model": identity,
        "method": method,
        "method_title": kind.title,
        "stage": kind.stage,
        "predictor": "prompted-lm",
        "config": opts.to_dict(),
        "prompt": {k: v for k, v in stored.items() if k not in ("prefix_ids", "prior_sums", "zero_prior_sums")}
        | {"demonstrations": demo_record, "calibration_rows": scoring.input_rows(dataset, prior_rows)},
        "data": artifacts.data_manifest(dataset),
        "protocol": plan.manifest(),
        "refit": "no training: the same model scores every letter"
        if method == "zero-shot"
        else ("examples drawn from every letter" if plan.name == "cv" else "examples drawn from the training split"),
        "placement": {"device": placement.device, "dtype": placement.dtype},
        "timings": {"score_s": score_s, "s_per_letter": score_s / max(1, n_scored), "total_s": time.perf_counter() - t_start},
        **overlap.manifest_part(trained),
        **artifacts.provenance(m),  # versions, environment, metrics, created
    }

    def write_files(tmp):
        (tmp / PROMPT_FILE).write_text(json.dumps(stored))
        scoring.write_predictions(tmp, dataset, plan, oof)
        overlap.write(tmp, trained)

    manifest = artifacts.write(folder, manifest, write_files)
    ctx.progress(1, 1, "done")
    return StepResult(lm.name, method, m, str(folder), False, manifest)


class PromptClassifier(StoredClassifier):
    """A stored zero-shot or few-shot evaluation as a classifier: the same prompt, label words, examples and scoring."""

    def __init__(self, lm: LM, stored: dict, metadata: dict):
        self.lm, self.stored, self.metadata = lm, stored, metadata
        self.classes_ = list(stored["classes"])
        self.scorer = Scorer(lm, self.classes_, stored["template"], dict(zip(self.classes_, stored["words"])), stored["max_length"])
        self.tokenizer, self.max_length = lm.tokenizer, self.scorer.max_length
        self.prefix = list(stored["prefix_ids"])
        if stored.get("prior_sums") is not None:  # the prior the evaluation used (calibration letters or content-free)
            self._prior = np.asarray(stored["prior_sums"], dtype=float)
        else:  # (stored before calibrate_on: content-free, computed here)
            self._prior = self.scorer.prior(self.prefix) if stored["calibration"] else None
        self._zero = stored.get("with_zero_shot", False)  # few-shot: also the prompt without examples, averaged
        self._zero_prior = None if stored.get("zero_prior_sums") is None else np.asarray(stored["zero_prior_sums"], dtype=float)

    def predict_proba(self, texts: list[str]) -> np.ndarray:
        parts = [(self.scorer.token_logprobs(list(texts), self.prefix), self._prior)]
        if self._zero:
            parts.append((self.scorer.token_logprobs(list(texts)), self._zero_prior))
        return ensemble(self.scorer, parts, self.stored["scoring"])

    def truncated(self, texts: list[str]) -> list[bool]:
        return self.scorer.truncated(list(texts), len(self.prefix))


def read_prompt(folder: Path) -> dict:
    return json.loads(artifacts.verified_file(folder, PROMPT_FILE).read_text())


READS = (*groups.names("protocol", "prompt"), "max_length")
ZERO_SHOT = StepKind(
    "zero-shot",
    "generative model, zero-shot (label likelihood)",
    "frozen",
    prompted_step,
    tuple(r for r in READS if r not in ("k_shot", "with_letter_alone", "labels_per_class")),
)
FEW_SHOT = StepKind("few-shot", "generative model, few-shot (examples from the training letters)", "frozen", prompted_step, READS)
KINDS = {k.name: k for k in (ZERO_SHOT, FEW_SHOT)}
