"""Written answers of a causal LM (the domain-adapt step, when the dataset has reference answers).

Sequences are token ids: a letter cut from its end so that what follows it always fits `max_length`, never the
rest. Training sequences are letter + answer prompt + " " + answer + end of text (the answer keeps at most half of
`max_length`, and a cut answer no end of text); generation prompts are letter + answer prompt, decoded greedily in
batches (left padding) until the end of text, `max_new_tokens` or the first line break after some text (the answer
is the written text up to it). Written answers are scored against the references by ROUGE-L F1 (rouge-score, Porter
stemming; mean over letters, 0-1) and corpus BLEU (sacrebleu, 0-100).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from engine.finetune import loop

VERSION = 2  # (2: a cut answer gets no end of text) bump when training sequences or generation change their results


def _ids(tokenizer, texts: list[str], special: bool) -> list[list[int]]:
    return tokenizer(texts, add_special_tokens=special, truncation=False, verbose=False)["input_ids"] if texts else []


def prompt_ids(tokenizer, texts: list[str], answer_prompt: str, max_length: int) -> list[np.ndarray]:
    """Letter (cut from its end) + answer prompt, at most `max_length` tokens (the prompt is never cut)."""
    tail = _ids(tokenizer, [answer_prompt], False)[0]
    room = max(1, max_length - len(tail))
    return [np.asarray(x[:room] + tail, dtype=np.int64) for x in _ids(tokenizer, texts, True)]


def answer_ids(tokenizer, texts: list[str], answers: list[str], answer_prompt: str, max_length: int) -> list[np.ndarray]:
    """Training sequences: letter (cut from its end) + answer prompt + " " + answer + end of text, at most `max_length`
    tokens; the answer keeps at most half of them, and one cut there gets no end of text (stopping mid-sentence is
    not taught)."""
    eos = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
    half = max(1, max_length // 2)
    said = [x + eos if len(x) + len(eos) <= half else x[:half] for x in _ids(tokenizer, [" " + a.strip() for a in answers], False)]
    lead = prompt_ids(tokenizer, texts, answer_prompt, max_length)
    tail = len(_ids(tokenizer, [answer_prompt], False)[0])
    out = []
    for p, a in zip(lead, said):
        letter, prompt = p[: len(p) - tail], p[len(p) - tail :]
        letter = letter[: max(1, max_length - len(prompt) - len(a))]
        out.append(np.concatenate([letter, prompt, np.asarray(a, dtype=np.int64)]))
    return out


def first_line(text: str) -> str:
    """The written answer: the generated text up to its first line break."""
    return text.strip().split("\n", 1)[0].strip()


def generate(
    net,
    tokenizer,
    prompts: list[np.ndarray],
    placement,
    *,
    max_new_tokens: int,
    batch_size: int = 8,
    progress: Callable[[int, int], None] | None = None,
) -> list[str]:
    """Greedy answers to the prompts (token ids), in their order; batches of similar length, left-padded."""
    import torch
    from transformers import StoppingCriteria, StoppingCriteriaList

    class LineEnd(StoppingCriteria):  # a sequence is done at its first line break after some text
        def __init__(self, start: int):
            self.start = start

        def __call__(self, input_ids, scores, **kwargs):
            texts = tokenizer.batch_decode(input_ids[:, self.start :], skip_special_tokens=True)
            return torch.tensor(["\n" in t.strip() for t in texts], dtype=torch.bool, device=input_ids.device)

    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    order = sorted(range(len(prompts)), key=lambda i: (-len(prompts[i]), i))
    out: list[str] = [""] * len(prompts)
    net.eval()
    for start in range(0, len(order), batch_size):
        batch = order[start : start + batch_size]
        longest = max(len(prompts[i]) for i in batch)
        input_ids = np.full((len(batch), longest), pad, dtype=np.int64)
        mask = np.zeros((len(batch), longest), dtype=np.int64)
        for row, i in enumerate(batch):
            input_ids[row, longest - len(prompts[i]) :] = prompts[i]
            mask[row, longest - len(prompts[i]) :] = 1
        with torch.inference_mode(), loop.autocast(placement):
            written = net.generate(
                input_ids=torch.from_numpy(input_ids).to(placement.device),
                attention_mask=torch.from_numpy(mask).to(placement.device),
                max_new_tokens=max_new_tokens,
                do_sample=False,
                num_beams=1,
                pad_token_id=pad,
                eos_token_id=tokenizer.eos_token_id,
                stopping_criteria=StoppingCriteriaList([LineEnd(longest)]),
            )
        for row, i in enumerate(batch):
            out[i] = first_line(tokenizer.decode(written[row, longest:].tolist(), skip_special_tokens=True))
        if progress:
            progress(min(start + batch_size, len(order)), len(order))
    return out


def scores(written: list[str], references: list[str]) -> dict:
    """ROUGE-L F1 (mean over letters, 0-1, Porter-stemmed) and corpus BLEU (0-100) of written answers against references."""
    import sacrebleu
    from rouge_score import rouge_scorer

    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)
    rouge = [scorer.score(ref, hyp)["rougeL"].fmeasure for hyp, ref in zip(written, references)]
    return {"rouge_l": float(np.mean(rouge)) if rouge else 0.0, "bleu": float(sacrebleu.corpus_bleu(written, [references]).score)}
