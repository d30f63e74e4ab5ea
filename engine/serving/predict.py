"""Classify letters with stored classifiers: each answers through the one classifier interface
(engine.classifiers), with its probabilities, latency and the time spent loading its model.

`check_letter` is the one check of a letter before any classifier sees it (the HTTP endpoint, `predict` and the
Classify page all call it): text that is not valid Unicode, or that holds fewer than MIN_WORD_CHARS letters or digits
once control and invisible characters are removed ("\u0000", a zero-width space, "!!!"), is refused rather than given a
confident label. Letters are classified in memory and never stored (they may be patient data).
"""

from __future__ import annotations

import time
import unicodedata
from collections import Counter

import numpy as np

from engine.errors import ClinBenchError, LetterError
from engine.evaluation import results
from engine.features import projection
from engine.methods import classifiers

MIN_WORD_CHARS = 3  # letters or digits a letter needs to be classified
EMPTY = "The letter is empty: paste or upload the text of one letter."


def check_letter(text: str, where: str = "The letter") -> str:
    """`text` stripped, after refusing (LetterError) text that is not valid Unicode (a lone surrogate), empty, or holds
    fewer than MIN_WORD_CHARS letters or digits once control and format (zero-width, direction) characters are removed."""
    text = text if isinstance(text, str) else ""
    bad = next((i for i, ch in enumerate(text) if 0xD800 <= ord(ch) <= 0xDFFF), None)
    if bad is not None:
        raise LetterError(
            f"{where} is not valid Unicode: character {bad + 1} is a lone surrogate (U+{ord(text[bad]):04X}). Send the text as UTF-8."
        )
    text = text.strip()
    if not text:
        raise LetterError(EMPTY.replace("The letter", where))
    words = sum(ch.isalnum() for ch in text if unicodedata.category(ch) not in ("Cc", "Cf"))
    if words < MIN_WORD_CHARS:
        raise LetterError(
            f"{where} has nothing to classify: {words} letter(s) or digit(s) once control and invisible characters are removed "
            f"(at least {MIN_WORD_CHARS} are needed). Paste the text of one clinical letter."
        )
    return text


def classify(text: str, evals: list) -> list[dict]:
    """One row per evaluation (engine.evaluation.results.Evaluation): predicted label, its probability, every class's
    probability, latency, model load time, whether the letter was cut to max_length; an error instead when that
    classifier cannot answer. `task` says single-label, binary or multi-label; a multi-label classifier's row also has
    `labels` (the tuple it predicts, possibly empty) and `thresholds`, and `predicted` is those labels as text (_label_set);
    a two-label classifier with an operating threshold answers the label that threshold gives (_operating_point)."""
    text = check_letter(text)
    rows = []
    for ev in evals:
        row = {"evaluation": ev.label, "model": ev.model, "method": ev.method, "stage": ev.stage, "key": ev.key}
        try:
            t0 = time.perf_counter()
            clf = classifiers.load(ev.folder)
            t1 = time.perf_counter()
            proba = clf.predict_proba([text])[0]
            t2 = time.perf_counter()
            best = int(proba.argmax())
            row.update(
                predicted=clf.classes_[best],
                score=float(proba[best]),
                score_kind="probability",
                scores={c: float(p) for c, p in zip(clf.classes_, proba)},
                latency_ms=(t2 - t1) * 1e3,
                load_s=t1 - t0,
                truncated=clf.truncated([text])[0],
                error=None,
            )
            row.update(_label_set(clf, proba))
        except ClinBenchError as exc:
            row.update(predicted=None, error=str(exc))
        rows.append(row)
    return rows


NO_LABEL = "(no label)"


def _label_set(clf, proba: np.ndarray) -> dict:
    """A multi-label classifier's answer (its `thresholds` are set): `labels` (the tuple of labels whose probability
    reaches its threshold, possibly empty), `thresholds` (label -> threshold), `predicted` (the labels joined with ' + ',
    or '(no label)') and `score` (the probability of the likeliest label). Nothing for a single-label classifier."""
    cuts = getattr(clf, "thresholds", None)
    if cuts is None:
        return _operating_point(clf, proba)
    labels = clf.decide(proba[None])[0]
    return {
        "task": "multi-label",
        "labels": labels,
        "thresholds": {c: float(t) for c, t in zip(clf.classes_, cuts, strict=True)},
        "predicted": " + ".join(labels) or NO_LABEL,
    }


def _operating_point(clf, proba: np.ndarray) -> dict:
    """A two-label classifier with an operating threshold (its `threshold` and `positive_label` are set): `task` "binary",
    `positive_label`, `threshold`, `p_positive` (the letter's probability of the positive label), and the label that
    threshold gives as `predicted` with its probability as `score` (it may differ from the most probable label). Other
    single-label classifiers: `task` "single-label" only."""
    cut, pos = getattr(clf, "threshold", None), getattr(clf, "positive_label", None)
    if cut is None or pos is None:
        return {"task": "single-label"}
    j = list(clf.classes_).index(pos)
    given = list(clf.classes_).index(clf.decide(proba[None])[0])
    return {
        "task": "binary",
        "positive_label": pos,
        "threshold": float(cut),
        "p_positive": float(proba[j]),
        "predicted": clf.classes_[given],
        "score": float(proba[given]),
    }


def agreement(rows: list[dict]) -> dict:
    """The majority answer among the classifiers that answered, and the share that chose it (multi-label: the whole label
    set, '(no label)' included; `label_votes` then counts, for each label, the classifiers that predicted it)."""
    answered = [r for r in rows if r.get("predicted")]
    votes = Counter(r["predicted"] for r in answered)
    if not votes:
        return {"label": None, "share": 0.0, "n": 0, "votes": {}}
    label, n = votes.most_common(1)[0]
    total = sum(votes.values())
    out = {"label": label, "share": n / total, "n": total, "votes": dict(votes)}
    if any(r.get("labels") is not None for r in answered):
        out["label_votes"] = dict(Counter(lab for r in answered for lab in r.get("labels") or ()))
    return out


def nearest(text: str, ev, k: int = 5, words: int = 30) -> list[dict]:
    """The `k` letters the stored classifier of `ev` (a frozen-embedding evaluation: svc, logreg) was trained on
    that lie closest to `text` in its model's embedding space, by cosine similarity: row (the input file's data row,
    0-based), label, similarity and
    the letter's first `words` words. Trained on: every letter under cv (the refit), the training split under holdout."""
    text = check_letter(text)
    if ev.stage != "frozen" or not ev.embeddings_key:
        raise ClinBenchError(
            f"{ev.label} has no stored embeddings of its training letters (only frozen-embedding evaluations, svc and "
            "logreg, have them): choose one of those for the nearest letters."
        )
    clf = classifiers.load(ev.folder)
    stored, _ = projection.stored_embeddings(ev.embeddings_key)
    ds = results.letters(ev)
    pred = results.predictions(ev)
    rows = np.arange(len(ds)) if pred.get("protocol") == "cv" else np.setdiff1d(np.arange(len(ds)), pred["test_index"])
    train = np.asarray(stored[rows], dtype=np.float32)
    vec = clf.embed([text])[0].astype(np.float32)
    sims = train @ vec / np.maximum(np.linalg.norm(train, axis=1) * np.linalg.norm(vec), 1e-12)
    top = np.argsort(-sims, kind="stable")[:k]
    out = []
    for j in top:
        i = int(rows[j])
        first = ds.texts[i].split()
        out.append(
            {
                "row": int(ds.rows[i]) if ds.rows is not None else i,
                "label": results.label_text(ds.labels[i]),
                "similarity": float(sims[j]),
                "letter": " ".join(first[:words]) + (" …" if len(first) > words else ""),
            }
        )
    return out
