"""Letters through several stored classifiers: labels, probabilities, agreement; the letter is never stored."""

from __future__ import annotations

import pytest

from engine import predict, results
from engine.data import load_dataset
from tests.conftest import run_step


def test_classify_one_letter_agrees_with_the_stored_predictions(cache, small_csv, tiny_encoder):
    # holdout: the stored classifier made the stored test predictions (under cv it is refitted on every letter)
    ds = load_dataset(small_csv, "letter", "specialty")
    for method in ("svc", "logreg"):
        run_step(ds, tiny_encoder, method, protocol="holdout", max_length=64, grid=False, n_boot=100)
    evals, _ = results.list_evaluations()
    svc = next(e for e in evals if e.method == "svc")
    pred = results.predictions(svc)
    agree = 0
    for i, stored in list(zip(pred["test_index"], pred["y_pred"]))[:8]:
        (row,) = predict.classify(ds.texts[i], [svc])
        assert row["error"] is None and row["latency_ms"] > 0 and set(row["scores"]) == set(ds.classes)
        agree += row["predicted"] == stored
    assert agree >= 7  # bf16 batches vs a single letter may move a near-tie
    rows = predict.classify("Patient with chest pain and dyspnoea.", evals)
    assert len(rows) == 2 and all(r["predicted"] in ds.classes for r in rows)
    assert not list((cache / "embeddings").glob("*")) or all("letter" not in p.name for p in (cache / "embeddings").iterdir())
    vote = predict.agreement(rows)
    assert vote["n"] == 2 and vote["label"] in ds.classes
    with pytest.raises(Exception, match="empty"):
        predict.classify("   ", evals)


def test_classify_does_not_store_the_letter(cache, two_evals):
    before = sorted(p.name for p in (cache / "embeddings").iterdir())
    evals, _ = results.list_evaluations()
    predict.classify("A letter that must not be kept.", evals[:1])
    assert sorted(p.name for p in (cache / "embeddings").iterdir()) == before
