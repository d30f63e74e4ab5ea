"""Classify letters with stored classifiers: each answers through the one classifier interface
(engine.classifiers), with its probabilities, latency and the time spent loading its model.

Letters are classified in memory and never stored (they may be patient data).
"""

from __future__ import annotations

import time
from collections import Counter

from engine import classifiers
from engine.errors import ClinBenchError


def classify(text: str, evals: list) -> list[dict]:
    """One row per evaluation (engine.results.Evaluation): predicted label, its probability, every class's
    probability, latency, model load time, whether the letter was cut to max_length; an error instead when that
    classifier cannot answer."""
    text = (text or "").strip()
    if not text:
        raise ClinBenchError("The letter is empty: paste or upload the text of one letter.")
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
        except ClinBenchError as exc:
            row.update(predicted=None, error=str(exc))
        rows.append(row)
    return rows


def agreement(rows: list[dict]) -> dict:
    """The majority label among the classifiers that answered, and the share that chose it."""
    votes = Counter(r["predicted"] for r in rows if r.get("predicted"))
    if not votes:
        return {"label": None, "share": 0.0, "n": 0, "votes": {}}
    label, n = votes.most_common(1)[0]
    total = sum(votes.values())
    return {"label": label, "share": n / total, "n": total, "votes": dict(votes)}
