"""What zero-shot and few-shot share (engine.methods.zero_shot, engine.methods.few_shot): the examples, calibration, the
cache key, the fold's classifier and the stored one. A generative model classifies by the likelihood of each label's
words (engine.methods.prompting).

`few-shot` examples: k per label, drawn (seeded by the protocol seed, the repeat and the fold) from the fold's
*training* letters only, each cut to its first tokens so they fit the context next to the letter, in label-balanced
rounds (`draw`, `demonstrations`). Calibration (`prior_sums`): each label's mean score on calibration letters drawn from
the training letters that are not examples (or on content-free inputs) is subtracted from its scores. Few-shot also
scores each letter without the examples and averages the two prompts' log-probabilities (`ensemble`; option
with_letter_alone: a tiny model copies labels from examples; measured below). A fold's classifier is a `Prompt`; the
stored classifier (`PromptClassifier`, predictor `prompted-lm`) holds the prompt, the label words and, for few-shot, the
examples' token ids and both priors; its manifest names the rows they came from (under cv drawn from every letter;
under holdout those of the training split, as scored).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from engine.cache import artifacts
from engine.cache.storage import sha256_json
from engine.data.dataset import Dataset
from engine.evaluation import scoring
from engine.methods import prompting
from engine.methods.base import Job, Method, StoredClassifier
from engine.methods.prompting import LM, RemoteLM, Scorer, load_lm, make_scorer, softmax
from engine.options import groups
from engine.options.groups import Options

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
    unit = scorer.per_token  # (a server model's scorer counts characters)
    room = (min(scorer.lm.context, DEMO_CONTEXT) - scorer.max_length) * unit - len(scorer.special)
    frame = len(scorer.head_ids) + len(scorer.tail_ids) + len(scorer.sep_ids) + max(len(ids) for ids in scorer.label_ids)
    per_example = room // n_classes
    k = k_shot or max(1, per_example // (frame + DEMO_TOKENS * unit))
    tokens = min(DEMO_TOKENS * unit, room // (n_classes * k) - frame)
    if tokens < 8 * unit:
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


def evaluation_key(identity: dict, method: str, opts: Options, plan_hash: str, dtype: str, chat: list[str] | None = None) -> str:
    """The cache key of a prompted evaluation: the model, the prompt options it reads, max_length, the folds, the protocol;
    and the chat template's frame when one is applied (`chat`: what chat_template resolved to for this model)."""
    prompt = groups.key_dict(opts.prompt)
    prompt.pop("chat_template")  # (what it resolves to is keyed: keys of plain prompts stay those made before the option)
    if prompt["server_prefix"] is None:
        prompt.pop("server_prefix")  # (keys made before the option stay)
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
            **({"chat": chat} if chat else {}),
        }
    )[:32]


class Prompt:
    """A prompted classifier of one fold (harness's `Fitted`): the prompt, its prior (each label's mean score on the
    calibration letters, or content-free inputs) and, for few-shot, the fold's examples and the prompt without them."""

    def __init__(self, job: Job, label: str, prior, prior_rows, demos=None, alone: bool = False, zero_prior=None, decision_rows=None):
        self.job, self.label, self.prior, self.prior_rows = job, label, prior, list(prior_rows)
        self.demos: Demonstrations | None = demos
        self.alone, self.zero_prior = alone, zero_prior  # few-shot: the letter alone too, with its own prior
        self.decision_rows = decision_rows  # training letters it read no answer of (None: none)

    def predict_proba(self, rows: np.ndarray) -> np.ndarray:
        t0 = time.perf_counter()
        out = self.proba(np.asarray(rows), f"scoring letters {self.label}".strip())
        if self.demos is not None:  # (zero-shot scored its letters once, before the folds)
            self.job.state["score_s"] += time.perf_counter() - t0
            self.job.state["n_scored"] += len(rows)
        return out

    def decision_letters(self) -> tuple[np.ndarray, np.ndarray] | None:
        if self.decision_rows is None or not len(self.decision_rows):
            return None
        rows = np.asarray(self.decision_rows)
        return rows, self.proba(rows, f"scoring training letters for the threshold {self.label}".strip())

    def proba(self, rows: np.ndarray, stage: str) -> np.ndarray:
        job, po = self.job, self.job.opts.prompt
        scorer = job.state["scorer"]
        if self.demos is None:  # zero-shot
            return softmax(scorer.scores(letter_sums(job, rows), po.scoring, self.prior))
        texts = [job.state["texts"][i] for i in rows]
        parts = [(scorer.token_logprobs(texts, self.demos.ids, job.ctx, stage), self.prior)]
        if self.alone:  # the same letters without the examples, calibrated on the same calibration letters
            parts.append((scorer.token_logprobs(texts, None, job.ctx, stage + " without examples"), self.zero_prior))
        return ensemble(scorer, parts, po.scoring)

    def stored(self) -> dict:
        """What prompt.json holds: all a PromptClassifier needs to answer as this classifier does."""
        scorer, po = self.job.state["scorer"], self.job.opts.prompt
        return {
            "template": scorer.template,
            "classes": self.job.classes,
            "words": scorer.words,
            "scoring": po.scoring,
            "calibration": po.calibration,
            "calibrate_on": po.calibrate_on,
            "prior_sums": None if self.prior is None else np.asarray(self.prior).tolist(),
            "max_length": scorer.max_length,
            "prefix_ids": self.demos.ids if self.demos else [],
            "with_zero_shot": self.alone,  # few-shot: also the prompt without examples, averaged (with_letter_alone)
            "zero_prior_sums": None if self.zero_prior is None else np.asarray(self.zero_prior).tolist(),
            "chat": scorer.chat,  # the chat template's frame around the prompt (None: the plain prompt)
            "server_prefix": getattr(scorer, "server_prefix", ""),  # a server model: the text before every prompt
        }


def letter_sums(job: Job, rows: np.ndarray) -> np.ndarray:
    """Zero-shot's summed label log-likelihoods of the letters `rows`: each letter scored once for every fold."""
    sums = job.state["sums"]
    missing = [int(r) for r in rows if int(r) not in sums]
    if missing:
        scored = job.state["scorer"].token_logprobs([job.state["texts"][r] for r in missing], ctx=job.ctx, stage="scoring training letters")
        sums.update(zip(missing, scored, strict=True))
    return np.array([sums[int(r)] for r in rows]).reshape(len(rows), len(job.classes))


class Prompted(Method):
    """What zero-shot and few-shot share: the model's identity and key, the prompt and its scorer, the stored classifier
    (prompt.json, predictor `prompted-lm`) and the manifest's `prompt` record."""

    stage = "frozen"
    predictor = "prompted-lm"

    remote_models = True  # it can use a model on a server (engine.models.remote): it needs label log-likelihoods, not weights

    def setup(self, job: Job) -> None:
        if prompting.remote.is_remote(job.model):  # the server checked (allow-list first) and its identity read
            job.state["lm"] = lm = prompting.load_remote(job.model, job.opts.prompt.allowed_hosts)
            job.identity = lm.identity
            if job.opts.prompt.chat_template == "on":
                raise prompting.ClinBenchError(
                    f"chat_template is on, but {lm.name} is on a server whose tokenizer is not here; set chat_template to off or auto."
                )
            job.state["chat"] = None
            return
        folder, _config, job.identity = prompting.decoder(job.model, job.placement)  # (refuses an encoder before the cache lookup)
        job.state["chat"] = prompting.chat_of(folder, job.opts.prompt.chat_template, job.identity["name"])

    def key(self, job: Job) -> str:
        dtype = "server" if job.identity.get("source") == "remote" else job.placement.dtype  # (the server's, not this machine's)
        return evaluation_key(job.identity, self.name, job.opts, job.plan.hash, dtype, job.state.get("chat"))

    def prepare(self, job: Job) -> None:
        po = job.opts.prompt
        lm = job.state.pop("lm", None) or load_lm(job.model, job.placement)
        template, texts = prompting.with_columns(po.prompt_template, job.dataset.letter_fields, job.dataset.texts)  # columns -> {text}
        scorer = make_scorer(lm, job.classes, template, po.verbalizers, job.opts.embedding.max_length, job.state.get("chat"))
        scorer.server_prefix = po.server_prefix or ""  # (a server model's; a local one has its tokenizer's special tokens)
        job.state.update(scorer=scorer, texts=texts, sums={}, score_s=0.0, n_scored=0)

    def save(self, job: Job, final: Prompt, folder: Path) -> None:
        (folder / PROMPT_FILE).write_text(json.dumps(final.stored()))

    def refit(self, job: Job) -> str:
        raise NotImplementedError

    def letters_read(self, job: Job, final: Prompt, train: np.ndarray) -> np.ndarray:
        """Its calibration letters and examples, and the training letters its threshold was chosen on (if one was)."""
        rows = [*final.prior_rows, *(final.demos.rows if final.demos is not None else [])]
        if job.needs_decision and final.decision_rows is not None:
            rows += [int(r) for r in final.decision_rows]
        return np.unique(np.asarray(rows, dtype=int))

    def record(self, job: Job, final: Prompt, fits: list[Prompt]) -> dict:
        stored, demos = final.stored(), None
        if final.demos is not None:
            demos = {
                "k_per_label": final.demos.k,
                "letter_tokens": final.demos.letter_tokens,
                "rows": scoring.input_rows(job.dataset, final.demos.rows),
                "labels": final.demos.labels,
                "prefix_tokens": len(final.demos.ids),
                "fold_rows": [scoring.input_rows(job.dataset, f.demos.rows) for f in fits],
            }
        s = job.state
        return {
            "prompt": {k: v for k, v in stored.items() if k not in ("prefix_ids", "prior_sums", "zero_prior_sums")}
            | {"demonstrations": demos, "calibration_rows": scoring.input_rows(job.dataset, final.prior_rows)},
            "refit": self.refit(job),
            "placement": {"device": job.placement.device, "dtype": job.placement.dtype}
            if job.identity.get("source") != "remote"
            else {"device": job.identity["url"], "dtype": "server"},
            **({"server": _server_record(job.identity)} if job.identity.get("source") == "remote" else {}),
            "timings": {"score_s": s["score_s"], "s_per_letter": s["score_s"] / max(1, s["n_scored"])},
        }


def _server_record(identity: dict) -> dict:
    """What a manifest says of a server model: where letters were sent, and whether label likelihoods were exact."""
    return {
        "url": identity["url"],
        "model": identity["server_model"],
        "mode": identity["mode"],
        "scoring": prompting.remote.MODES[identity["mode"]],
        "letters_sent_to": identity["url"],
        "letter_cut": f"{prompting.CHARS_PER_TOKEN} characters per token of max_length (the tokenizer is the server's)",
    }


class PromptClassifier(StoredClassifier):
    """A stored zero-shot or few-shot evaluation as a classifier: the same prompt, label words, examples and scoring."""

    def __init__(self, lm: LM | RemoteLM, stored: dict, metadata: dict):
        self.lm, self.stored, self.metadata = lm, stored, metadata
        self.classes_ = list(stored["classes"])
        words = dict(zip(self.classes_, stored["words"]))
        self.scorer = make_scorer(lm, self.classes_, stored["template"], words, stored["max_length"], stored.get("chat"))
        self.scorer.server_prefix = stored.get("server_prefix") or ""
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
