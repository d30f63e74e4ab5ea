"""Long letters read in overlapping windows (the embedding option `windows`), and their windows' vectors pooled into one.

A letter longer than max_length tokens is, with `windows` = k > 1, read as up to k windows of max_length tokens each:
the tokenizer's own special tokens (e.g. [CLS] ... [SEP]) around a run of the letter's tokens, each run starting
`step` tokens after the previous one, so consecutive windows share a quarter of their letter tokens (OVERLAP): a
sentence cut at one window's edge is read whole, with context, in the next. A letter longer than k windows reach is
still cut after the k-th (counted as truncated). A letter that fits in max_length is one window, exactly the ids a
cut reading gives it, so its vector does not change.

Pooling (`Accumulator`): a letter's vector is the mean of its windows' pooled vectors, each weighted by the real tokens
its window read. Under `mean` pooling that is the mean over every token read (a token in an overlap counts once per
window, with each window's context), so one window gives exactly the cut vector; a short tail window, which read few
tokens, weighs little. `cls` (encoders) and `last` (decoders) pool each window to one vector, which sees the whole of
that window (bidirectional attention; causal attention ending at the window's last token), and the same weighted mean
combines them. For `last` the last window's last token alone would describe only the letter's end (the reason for the
visit and the history come first in most letters) and would make the other windows' compute wasted; the weighted
mean keeps every part of the letter, as the windows of an encoder do.
"""

from __future__ import annotations

import numpy as np

OVERLAP = 0.25  # share of a window's letter tokens that the next window reads again (part of the embeddings' cache key)


def special_tokens(tokenizer) -> tuple[list[int], list[int]]:
    """The ids the tokenizer puts before and after a text's own tokens (e.g. [CLS] and [SEP]; none for most decoders)."""
    probe = "the patient was seen today"
    with_special = list(tokenizer(probe, add_special_tokens=True)["input_ids"])
    text = list(tokenizer(probe, add_special_tokens=False)["input_ids"])
    for start in range(len(with_special) - len(text) + 1):
        if with_special[start : start + len(text)] == text:
            return with_special[:start], with_special[start + len(text) :]
    return [], []  # a tokenizer that changes the text's tokens when it adds special ones: windows of bare tokens


def step_of(max_length: int, n_special: int) -> tuple[int, int]:
    """(letter tokens per window, tokens from one window's start to the next's)."""
    span = max(1, max_length - n_special)
    return span, max(1, span - int(span * OVERLAP))


def reach(max_length: int, windows: int, n_special: int) -> int:
    """The longest letter (in tokens, special ones included) that `windows` windows read whole."""
    span, step = step_of(max_length, n_special)
    return n_special + span + (windows - 1) * step


def split(ids: list[int], prefix: list[int], suffix: list[int], max_length: int, windows: int) -> tuple[list[list[int]], bool]:
    """The windows of one letter's token ids (special tokens included, longer than max_length), and whether it is still cut."""
    content = ids[len(prefix) : len(ids) - len(suffix)]
    span, step = step_of(max_length, len(prefix) + len(suffix))
    out = []
    for start in range(0, len(content), step):
        out.append(prefix + content[start : start + span] + suffix)
        if start + span >= len(content):
            return out, False
        if len(out) == windows:
            break
    return out, True


class Accumulator:
    """Writes rows' pooled vectors into their letters' rows of `out` (e.g. a memory map, zero-filled): a letter read in one
    row gets that row's vector as it is; a letter read in several gets their mean weighted by each row's tokens, written
    once its last row is in. `owner[r]` is the letter of row r, `weights[r]` its real tokens."""

    def __init__(self, out, owner: np.ndarray, weights: np.ndarray):
        self.out, self.owner, self.weights = out, owner, np.asarray(weights, dtype=np.float32)
        self.left = np.bincount(owner, minlength=out.shape[0])  # rows still to come, per letter
        self.single = self.left == 1
        self.total = np.zeros(out.shape[0], dtype=np.float32)  # tokens summed so far, per letter

    def add(self, rows: list[int], vectors: np.ndarray) -> int:
        """Take the vectors of `rows` (one per row, in order); the number of letters now complete. A letter's weighted sum
        builds up in its own row of `out` (on disk for a memory map), so memory does not grow with the letters pending."""
        letters = self.owner[rows]
        alone = self.single[letters]
        if alone.all():
            self.out[letters] = vectors
            return len(rows)
        self.out[letters[alone]] = vectors[alone]
        done = int(alone.sum())
        for r, letter, vec in zip(np.asarray(rows)[~alone], letters[~alone], vectors[~alone], strict=True):
            self.out[letter] += self.weights[r] * vec
            self.total[letter] += self.weights[r]
            self.left[letter] -= 1
            if self.left[letter] == 0:
                self.out[letter] /= self.total[letter]
                done += 1
        return done
