"""A causal language model as a classifier: the prompt, each label's words, and how their likelihood is scored.

`load_lm` loads a decoder with its language-model head (placement from engine.devices, memory checked like
engine.models). A `Scorer` fills the prompt template (`{text}`: the letter, `{labels}`: the label words joined), cuts
the *letter* (never the instruction or the answer) so that prompt + longest label fits `max_length` and the model's context, and scores every label by
the log-likelihood of its words (with a leading space) after the prompt: one forward pass over the prompt (on top
of a cached prefix of demonstrations, when given), then each label's remaining tokens on that pass's KV cache.

`token_logprobs` returns the summed log-likelihood of each label; `combine` turns sums into a score: `sum`,
`mean` (per token) or `norm` (per byte of the label's text, lm-evaluation-harness's acc_norm). Contextual
calibration (Zhao et al. 2021) subtracts each label's score on content-free inputs (the same prompt around
"N/A" and "[MASK]", averaged): a prior that reads no letter. Probabilities are the softmax over the scores.

A model on an OpenAI-compatible server (`openai-compat:MODEL@URL`, engine.models.remote) answers the same interface:
`RemoteScorer` (made by `make_scorer` for a `RemoteLM`) builds the same prompt as text and asks the server for each
label's log-likelihood after it. Its tokenizer is the server's, so its units are characters: the letter is cut at
CHARS_PER_TOKEN characters per token of max_length (and of the examples' budget), and each prompt is sent whole.

With a chat template (`chat_frame`, option chat_template, off by default: auto applies the tokenizer's own when it has one) the prompt
is the user's message and the label words (without a leading space) start the assistant's answer: the template's text
before and after the message frames the prompt, and its own special tokens replace the tokenizer's leading ones.
"""

from __future__ import annotations

import re
import string
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from engine.cache.context import StepContext, ensure
from engine.errors import ClinBenchError, ModelUnavailable
from engine.models import catalog, remote
from engine.models.devices import Placement, choose

# Picked on 100 training letters of the default data (bench/prompting.py compares it with the others in PROMPTS).
DEFAULT_TEMPLATE = "Medical transcription:\n{text}\n\nMedical specialty ({labels}):"
PROMPTS = {
    "transcription": DEFAULT_TEMPLATE,
    "plain": "{text}\n\nSpecialty:",
    "question": "Clinical letter:\n{text}\n\nQuestion: Which medical specialty wrote this letter? Choose one of: {labels}.\nAnswer:",
}
# Content-free letters for calibration: "N/A" and "[MASK]" (an empty letter gave a poor prior: 0.21 macro-F1 alone vs 0.52 and 0.56,
# 0.51 averaged with the others vs 0.54 without, on 40 training letters).
CONTENT_FREE = ("N/A", "[MASK]")
SCORINGS = ("sum", "mean", "norm")
DEFAULT_CONTEXT = 2048  # when a config names no max_position_embeddings
SEPARATOR = "\n\n"  # between demonstrations
CHARS_PER_TOKEN = 4  # a server model: characters of text per token of max_length (English prose averages about 4)


@dataclass
class LM:
    """A loaded causal LM: the network (eval mode, on its placement), tokenizer, identity (for cache keys), context length."""

    name: str
    net: Any
    tokenizer: Any
    identity: dict
    placement: Placement
    context: int
    path: Path = field(default=Path("."))


def decoder(name: str, placement: Placement | None = None) -> tuple[Path, Any, dict]:
    """(folder, config, identity) of a generative model, without loading its weights; ClinBenchError for an encoder or a
    model that does not fit. The identity is what cache keys and manifests record: the name first, the model type, "decoder"."""
    entry = catalog.resolve(name)
    folder, identity = catalog.locate(entry)
    config = catalog.load_config(folder)
    if catalog.model_kind(config) != "decoder":
        raise ClinBenchError(
            f"{entry.name} is an encoder; zero-shot and few-shot score label words with a generative (causal) model such as smollm2."
        )
    catalog.check_fits(entry.name, catalog.count_parameters(config), placement or choose())
    rest = {k: v for k, v in identity.items() if k != "name"}
    return folder, config, {"name": entry.name, **rest, "model_type": config.model_type, "kind": "decoder"}


def load_lm(name: str, placement: Placement | None = None) -> LM:
    """A decoder with its language-model head; ClinBenchError for an encoder or a model that does not fit."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    placement = placement or choose()
    folder, config, identity = decoder(name, placement)
    try:
        tokenizer = AutoTokenizer.from_pretrained(folder)
        net = AutoModelForCausalLM.from_pretrained(folder, dtype=placement.torch_dtype)
    except Exception as exc:  # a damaged file raises its library's own error types
        raise ModelUnavailable(
            f"Loading {identity['name']} from {folder} failed: {type(exc).__name__}: {(str(exc).splitlines() or [''])[0][:240]}"
        ) from None
    net.to(placement.device).eval()
    context = int(getattr(config, "max_position_embeddings", None) or DEFAULT_CONTEXT)
    return LM(identity["name"], net, tokenizer, identity, placement, context, folder)


CHAT_MARK = "\u2063letter\u2063"  # where the user's message goes when the chat template is rendered (split there)


def chat_frame(tokenizer, setting: str, model: str = "the model") -> list[str] | None:
    """[before the user's message, after it up to where the assistant's answer starts] of the tokenizer's chat template
    (`setting`: the chat_template option); None for the plain prompt (off, or auto with a tokenizer that has none)."""
    if setting == "off":
        return None
    if not getattr(tokenizer, "chat_template", None):
        if setting == "on":
            raise ClinBenchError(f"chat_template is on, but {model}'s tokenizer has no chat template; set chat_template to auto or off.")
        return None
    try:
        text = tokenizer.apply_chat_template([{"role": "user", "content": CHAT_MARK}], tokenize=False, add_generation_prompt=True)
    except Exception as exc:  # a template that needs other messages (a system turn) raises its own error types
        raise ClinBenchError(
            f"{model}'s chat template cannot frame one user message ({type(exc).__name__}: {exc}); set chat_template to off."
        ) from None
    if text.count(CHAT_MARK) != 1:
        raise ClinBenchError(f"{model}'s chat template does not hold the user's message once; set chat_template to off.")
    return text.split(CHAT_MARK)


def chat_of(folder: Path, setting: str, model: str) -> list[str] | None:
    """chat_frame of the tokenizer in `folder` (not loaded when the option is off)."""
    if setting == "off":
        return None
    from transformers import AutoTokenizer

    return chat_frame(AutoTokenizer.from_pretrained(folder), setting, model)


def label_words(classes: list[str], verbalizers: dict[str, str] | None) -> list[str]:
    """Each class's words: its verbalizer, else the label with '-' and '_' read as spaces. (No table of better words for
    particular label names: a default tuned to the bundled letters would flatter them and help no other dataset.)"""
    given = verbalizers or {}
    unknown = sorted(set(given) - set(classes))
    if unknown:
        raise ClinBenchError(f"verbalizers name labels the data does not have: {', '.join(unknown)}. Labels: {', '.join(classes)}.")
    return [str(given.get(c) or re.sub(r"[-_]+", " ", c)).strip() for c in classes]


def split_template(template: str, words: list[str]) -> tuple[str, str]:
    """(before the letter, after the letter) of a template, with {labels} filled in. Refuses other placeholders."""
    names = [f for _, f, _, _ in string.Formatter().parse(template) if f is not None]
    if names.count("text") != 1:
        raise ClinBenchError("The prompt template must contain {text} (where the letter goes) exactly once.")
    other = sorted(set(names) - {"text", "labels"})
    if other:
        raise ClinBenchError(
            f"The prompt template names {', '.join('{' + o + '}' for o in other)}; a prompt can use {{text}} (the letter), {{labels}} "
            "(the label words) and the columns of the data's text template."
        )
    filled = template.replace("{labels}", ", ".join(words))
    head, tail = filled.split("{text}")
    return head.replace("{{", "{").replace("}}", "}"), tail.replace("{{", "{").replace("}}", "}")


def with_columns(template: str | None, fields: dict[str, list[str]] | None, texts: list[str]) -> tuple[str | None, list[str]]:
    """(template with `{text}`, the letters) for a template that may name the data's columns instead of `{text}` (the
    columns of the data's text template, e.g. `Question: {QUESTION}\nContext: {CONTEXTS}\nAnswer:`): the span from the
    first column to the last becomes each letter (so the letter side is what gets cut), the rest stays the prompt."""
    if template is None:
        return None, list(texts)
    try:
        parts = list(string.Formatter().parse(template))
    except ValueError as exc:
        raise ClinBenchError(
            f"The prompt template is malformed ({exc}): write a placeholder as {{name}}, a brace as {{{{ or }}}}."
        ) from None
    names = [f for _, f, _, _ in parts if f is not None]
    columns = [n for n in names if n not in ("text", "labels")]
    if not columns:
        return template, list(texts)
    have = sorted(fields or {})
    if "text" in names:
        raise ClinBenchError("The prompt template names both {text} and columns; use {text} (the whole letter) or the columns, not both.")
    missing = sorted(set(columns) - set(have))
    if missing:
        where = f"the columns of the data's text template: {', '.join(have)}" if have else "no columns: the data has no text template"
        raise ClinBenchError(
            f"The prompt template names {', '.join('{' + m + '}' for m in missing)}; it can name {{text}}, {{labels}} and {where}."
        )
    # literal text before the first column, the span (first column .. last column), literal text after
    idx = [i for i, (_, f, _, _) in enumerate(parts) if f in columns]
    first, last = idx[0], idx[-1]
    if any(parts[i][1] == "labels" for i in range(first, last + 1)):
        raise ClinBenchError("The prompt template puts {labels} between the columns; put it before or after them.")

    def render(ps, values=None) -> str:
        out = ""
        for lit, f, _, _ in ps:
            out += lit.replace("{", "{{").replace("}", "}}") if values is None else lit
            if f is not None:
                out += ("{" + f + "}") if values is None else values[f]
        return out

    head = render(parts[:first]) + parts[first][0].replace("{", "{{").replace("}", "}}")
    tail = render(parts[last + 1 :])
    span = [(lit if i else "", f, a, b) for i, (lit, f, a, b) in enumerate(parts[first : last + 1])]
    letters = [render(span, {c: fields[c][r] for c in columns}) for r in range(len(texts))]
    return head + "{text}" + tail, letters


def preview(template: str | None, classes: list[str], verbalizers: dict[str, str] | None, letter: str, words: int = 60) -> str:
    """The prompt a letter gets, as a person checks it: the template filled with the letter's first `words` words and the
    label words, followed by each answer the model is scored on. No model is loaded (the letter is cut by words here,
    by tokens when scored)."""
    label_text = label_words(classes, verbalizers)
    head, tail = split_template(template or DEFAULT_TEMPLATE, label_text)
    spans = list(re.finditer(r"\S+", letter))  # cut after `words` words, keeping the letter's own line breaks
    shown = letter[: spans[words - 1].end()] + " […]" if len(spans) > words else letter.strip()
    return head + shown + tail + "\n\n— scored answers: " + " | ".join(repr(" " + w) for w in label_text)


def combine(sums: np.ndarray, n_tokens: np.ndarray, n_bytes: np.ndarray, scoring: str) -> np.ndarray:
    """Scores from summed log-likelihoods (letters x classes): sum, mean per token, or per byte (acc_norm)."""
    if scoring == "sum":
        return sums
    if scoring == "mean":
        return sums / n_tokens
    if scoring == "norm":
        return sums / n_bytes
    raise ValueError(f"scoring is one of {', '.join(SCORINGS)}, not {scoring!r}")


def _new_cache():
    """An empty KV cache that keeps every position. The cache a sliding-window model makes itself (Mistral, Gemma-2) drops
    positions beyond its window and then cannot be cropped back to a prompt; the model's attention masks still apply the
    window to this one."""
    from transformers import DynamicCache

    return DynamicCache()


def _crop(cache, length: int) -> None:
    """Cut a KV cache back to its first `length` tokens (a negative count removes tokens in every transformers version)."""
    extra = cache.get_seq_length() - length
    if extra > 0:
        cache.crop(-extra)


def softmax(scores: np.ndarray) -> np.ndarray:
    z = scores - scores.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


class Scorer:
    """Scores each class's words after a prompt made of one template, for one model and one set of classes."""

    per_token = 1  # units of the ids it works in per token (RemoteScorer: characters)

    def __init__(
        self, lm: LM, classes: list[str], template: str | None, verbalizers: dict | None, max_length: int, chat: list[str] | None = None
    ):
        self.lm, self.classes, self.max_length = lm, list(classes), int(max_length)
        self.template = template or DEFAULT_TEMPLATE
        self.words = label_words(self.classes, verbalizers)
        self.chat = chat  # chat_frame: the prompt is the user's message, the label words the assistant's answer
        tok = lm.tokenizer
        head, tail = split_template(self.template, self.words)
        if chat:  # the template writes its own special tokens (a BOS where it has one); the answer starts the assistant's turn
            head, tail, lead, self.special = chat[0] + head, tail + chat[1], "", []
        else:
            lead, self.special = " ", self._leading_specials()
        self.head_ids, self.tail_ids = self.encode(head), self.encode(tail)
        self.label_ids = [self.encode(lead + w) for w in self.words]
        if any(not ids for ids in self.label_ids):
            raise ClinBenchError("A label's words are empty once tokenised; give every label a verbalizer with words.")
        self.n_tokens = np.array([len(ids) for ids in self.label_ids], dtype=float)
        self.n_bytes = np.array([len((lead + w).encode("utf-8")) for w in self.words], dtype=float)
        self.sep_ids = self.encode(SEPARATOR)
        self.tok = tok
        self._kept: tuple[list[int], Any] | None = None
        self._lock = threading.Lock()  # one caller at a time on the kept cache

    def _leading_specials(self) -> list[int]:
        """The special tokens the tokenizer puts before a text (a BOS for Llama-like models; nothing for GPT-2-like)."""
        tok = self.lm.tokenizer
        with_special = tok("a", add_special_tokens=True)["input_ids"]
        plain = tok("a", add_special_tokens=False)["input_ids"]
        return list(with_special[: len(with_special) - len(plain)]) if with_special[-len(plain) :] == plain else []

    def encode(self, text: str) -> list[int]:
        return list(self.lm.tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"])

    def letter_budget(self, prefix_len: int = 0) -> int:
        """Tokens of the letter that fit: prompt + longest label within max_length and, after the prefix, the context."""
        room = min(self.max_length, self.lm.context - prefix_len - len(self.special))
        budget = room - len(self.head_ids) - len(self.tail_ids) - max(len(ids) for ids in self.label_ids)
        if budget < 1:
            raise ClinBenchError(
                f"The prompt leaves no room for the letter within {room} tokens (max_length {self.max_length}, context {self.lm.context}); "
                "raise max_length or shorten the prompt template and label words."
            )
        return budget

    def letter_ids(self, text: str, budget: int) -> tuple[list[int], bool]:
        ids = self.encode(text)
        return ids[:budget], len(ids) > budget

    def prompt_ids(self, text: str, budget: int) -> list[int]:
        """The prompt of one letter (without leading special tokens): instruction, letter cut to `budget`, question."""
        return self.head_ids + self.letter_ids(text, budget)[0] + self.tail_ids

    def demonstration_ids(self, text: str, class_index: int, n_letter_tokens: int) -> list[int]:
        """One worked example: the prompt around the first `n_letter_tokens` of a letter, its label's words, a separator."""
        return self.prompt_ids(text, n_letter_tokens) + self.label_ids[class_index] + self.sep_ids

    def truncated(self, texts: list[str], prefix_len: int = 0) -> list[bool]:
        budget = self.letter_budget(prefix_len)
        return [len(self.encode(t)) > budget for t in texts]

    # --- forward passes ------------------------------------------------------------

    def _prefix_cache(self, prefix: list[int]):
        """The KV cache of the leading special tokens + `prefix` (demonstrations) and its length; the last one is kept, so
        a stored few-shot classifier computes its examples once, not once per call."""
        import torch

        ids = self.special + list(prefix)
        if not ids:
            return None, 0
        if self._kept is None or self._kept[0] != ids:
            out = self.lm.net(input_ids=torch.tensor([ids], device=self.lm.placement.device), past_key_values=_new_cache(), use_cache=True)
            self._kept = (ids, out.past_key_values)
        _crop(self._kept[1], len(ids))  # (a cancelled call may have left a letter on it)
        return self._kept[1], len(ids)

    def _score_one(self, ids: list[int], cache, base: int) -> np.ndarray:
        """Summed log-likelihood of each class's words after `ids` (which follow the `base` tokens in `cache`); the cache is
        cropped back to `base` afterwards, so a prefix's cache serves every letter."""
        import torch

        dev = self.lm.placement.device
        out = self.lm.net(input_ids=torch.tensor([ids], device=dev), past_key_values=cache or _new_cache(), use_cache=True)
        cache = out.past_key_values
        after = cache.get_seq_length()
        first = torch.log_softmax(out.logits[0, -1].float(), -1)
        sums = np.array([float(first[lab[0]]) for lab in self.label_ids])
        multi = [j for j, lab in enumerate(self.label_ids) if len(lab) > 1]
        if multi:  # the later tokens of every longer label in one batch on copies of the prompt's cache (right-padded: causal)
            width = max(len(self.label_ids[j]) - 1 for j in multi)
            rows = [self.label_ids[j][:-1] + [self.label_ids[j][0]] * (width + 1 - len(self.label_ids[j])) for j in multi]
            cache.batch_repeat_interleave(len(multi))
            lp = torch.log_softmax(
                self.lm.net(input_ids=torch.tensor(rows, device=dev), past_key_values=cache, use_cache=True).logits.float(), -1
            )
            for r, j in enumerate(multi):
                lab = self.label_ids[j]
                sums[j] += float(lp[r, torch.arange(len(lab) - 1), torch.tensor(lab[1:])].sum())
            _crop(cache, after)
            cache.batch_select_indices(torch.tensor([0], device=dev))
        if base:
            _crop(cache, base)
        return sums

    def token_logprobs(
        self, texts: list[str], prefix: list[int] | None = None, ctx: StepContext | None = None, stage: str = "scoring letters"
    ) -> np.ndarray:
        """Summed log-likelihood of each class's words after each letter's prompt (letters x classes), the prompts following
        the leading special tokens and `prefix` (demonstrations: computed once, its cache reused for every letter)."""
        import torch

        ctx = ensure(ctx)
        out = np.zeros((len(texts), len(self.classes)))
        with self._lock, torch.inference_mode():
            cache, base = self._prefix_cache(prefix or [])
            budget = self.letter_budget(base - len(self.special))
            for i, text in enumerate(texts):
                if i % 8 == 0:
                    ctx.check_stop(f"Cancelled after scoring {i} of {len(texts)} letters.")
                    ctx.progress(i, len(texts), stage)
                out[i] = self._score_one(self.prompt_ids(text, budget), cache, base)
        ctx.progress(len(texts), len(texts), stage)
        return out

    def prior(self, prefix: list[int] | None = None) -> np.ndarray:
        """Summed log-likelihood of each class's words on the content-free inputs (one row each): reads no letter."""
        return self.token_logprobs(list(CONTENT_FREE), prefix)

    def scores(self, sums: np.ndarray, scoring: str, prior_sums: np.ndarray | None = None) -> np.ndarray:
        """Scores of summed log-likelihoods; with `prior_sums` (content-free rows) calibrated: the mean prior score subtracted."""
        s = combine(sums, self.n_tokens, self.n_bytes, scoring)
        if prior_sums is not None:
            s = s - combine(prior_sums, self.n_tokens, self.n_bytes, scoring).mean(axis=0, keepdims=True)
        return s

    def proba(self, sums: np.ndarray, scoring: str, prior_sums: np.ndarray | None = None) -> np.ndarray:
        return softmax(self.scores(sums, scoring, prior_sums))


# --- a model on a server ---------------------------------------------------------------------------------------------


@dataclass
class RemoteLM:
    """A generative model on an OpenAI-compatible server: its client (engine.models.remote), identity and context (tokens)."""

    name: str
    client: remote.Client
    identity: dict
    context: int = DEFAULT_CONTEXT
    tokenizer: Any = None  # (the server's)


def _context_of(listing: dict) -> int:
    """The context length a /models entry states (vLLM: max_model_len; llama.cpp: meta.n_ctx_train), else DEFAULT_CONTEXT."""
    meta = listing.get("meta") if isinstance(listing.get("meta"), dict) else {}
    for value in (listing.get("max_model_len"), meta.get("n_ctx_train")):
        if isinstance(value, int) and value > 0:
            return value
    return DEFAULT_CONTEXT


def load_remote(name: str, allowed: list[str] | None = None) -> RemoteLM:
    """A server model, checked: the host allowed (before anything is sent), the server answering, the model served, and how
    it gives log-probabilities (`mode`). Its identity (cache keys, manifests) holds the URL, the served model's stable
    listing fields and the mode; the weights behind a name cannot be hashed from here."""
    r = remote.parse(name)
    remote.check_allowed(r, allowed)
    client = remote.Client(r, allowed)
    listing = remote.served_models(r, allowed)
    served = [m.get("id") for m in listing]
    entry = next((m for m in listing if m.get("id") == r.model), None)
    if listing and entry is None:
        raise ModelUnavailable(f"The server at {r.url} does not serve {r.model!r}; it serves {', '.join(map(str, served))}.")
    entry = entry or {}
    stable = {k: entry[k] for k in ("id", "owned_by", "max_model_len") if k in entry}
    if isinstance(entry.get("meta"), dict):
        stable["meta"] = entry["meta"]
    mode = client.ensure_mode()
    identity = {
        "name": r.name,
        "source": "remote",
        "url": r.url,
        "server_model": r.model,
        "served": stable,
        "mode": mode,
        "kind": "decoder",
    }
    return RemoteLM(r.name, client, identity, _context_of(entry))


def make_scorer(lm, classes: list[str], template: str | None, verbalizers: dict | None, max_length: int, chat: list[str] | None = None):
    """A Scorer for a local LM, a RemoteScorer for a server model: the same interface."""
    cls = RemoteScorer if isinstance(lm, RemoteLM) else Scorer
    return cls(lm, classes, template, verbalizers, max_length, chat)


class RemoteScorer(Scorer):
    """A Scorer whose model is on a server: the same prompts as text (units: characters), each label's log-likelihood
    asked of the server (engine.models.remote.Client). Scores, calibration and examples are the Scorer's."""

    per_token = CHARS_PER_TOKEN
    server_prefix = ""  # text before every prompt (option server_prefix)

    def __init__(self, lm: RemoteLM, classes, template, verbalizers, max_length: int, chat: list[str] | None = None):
        if chat:
            raise ClinBenchError(
                f"chat_template applies a tokenizer's chat template on this machine; {lm.name} is on a server, whose tokenizer is "
                "not here. Set chat_template to off (or auto) for a server model."
            )
        self.lm, self.classes, self.max_length, self.chat = lm, list(classes), int(max_length), None
        self.template = template or DEFAULT_TEMPLATE
        self.words = label_words(self.classes, verbalizers)
        head, tail = split_template(self.template, self.words)
        self.special, self.tok = [], None
        self.head_ids, self.tail_ids, self.sep_ids = list(head), list(tail), list(SEPARATOR)
        self.label_ids = [list(" " + w) for w in self.words]
        if any(not w for w in self.words):
            raise ClinBenchError("A label's words are empty; give every label a verbalizer with words.")
        self.n_tokens = np.ones(len(self.words))  # replaced by the server's token counts on the first answer
        self._counted = False
        self.n_bytes = np.array([len((" " + w).encode("utf-8")) for w in self.words], dtype=float)
        self._kept = None
        self._lock = threading.Lock()

    def encode(self, text: str) -> list[str]:
        return list(text)

    def letter_budget(self, prefix_len: int = 0) -> int:
        room = min(self.max_length * CHARS_PER_TOKEN, self.lm.context * CHARS_PER_TOKEN - prefix_len)  # (as Scorer's, in characters)
        budget = room - len(self.head_ids) - len(self.tail_ids) - max(len(ids) for ids in self.label_ids)
        if budget < 1:
            raise ClinBenchError(
                f"The prompt leaves no room for the letter within {room} characters (max_length {self.max_length} tokens at "
                f"{CHARS_PER_TOKEN} characters each); raise max_length or shorten the prompt template and label words."
            )
        return budget

    def token_logprobs(self, texts, prefix=None, ctx: StepContext | None = None, stage: str = "scoring letters") -> np.ndarray:
        ctx = ensure(ctx)
        head = "".join(prefix or [])
        budget = self.letter_budget(len(head))
        head = self.server_prefix + head
        continuations = ["".join(ids) for ids in self.label_ids]
        out = np.zeros((len(texts), len(self.classes)))
        step = remote.BATCH
        for i in range(0, len(texts), step):
            ctx.check_stop(f"Cancelled after scoring {i} of {len(texts)} letters.")
            ctx.progress(i, len(texts), stage)
            prompts = [head + "".join(self.prompt_ids(t, budget)) for t in texts[i : i + step]]
            sums, counts = self.lm.client.label_logprobs(prompts, continuations, self.words)
            out[i : i + len(prompts)] = sums
            if not self._counted and counts:
                self.n_tokens, self._counted = np.array(counts[0], dtype=float), True
        ctx.progress(len(texts), len(texts), stage)
        return out
