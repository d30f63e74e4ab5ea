"""Letters through several stored classifiers: labels, probabilities, agreement; the letter is never stored."""

from __future__ import annotations

import pytest

from engine.data.dataset import load_dataset
from engine.evaluation import results
from engine.serving import predict
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


def test_nearest_training_letters_of_a_holdout_classifier(cache, small_csv, tiny_encoder):
    """A training letter's own text finds itself first (cosine ~1); the held-out test letters are never offered."""
    from engine.errors import ClinBenchError

    ds = load_dataset(small_csv, "letter", "specialty")
    run_step(ds, tiny_encoder, "svc", protocol="holdout", max_length=64, grid=False, n_boot=100)
    (svc,) = results.list_evaluations()[0]
    test = set(results.predictions(svc)["test_index"])
    train_row = next(i for i in range(len(ds)) if i not in test)
    near = predict.nearest(ds.texts[train_row], svc, k=5)
    assert len(near) == 5 and near[0]["row"] == train_row and near[0]["similarity"] > 0.99
    assert [n["similarity"] for n in near] == sorted((n["similarity"] for n in near), reverse=True)
    assert not test & {n["row"] for n in near} and all(n["label"] == str(ds.labels[n["row"]]) for n in near)
    test_row = min(test)  # a test letter is not among the training letters, even when it is the query itself
    assert test_row not in {n["row"] for n in predict.nearest(ds.texts[test_row], svc, k=len(ds))}
    with pytest.raises(ClinBenchError, match="empty"):
        predict.nearest("  ", svc)


def test_nearest_needs_stored_embeddings(cache, small_csv):
    from engine.errors import ClinBenchError

    ds = load_dataset(small_csv, "letter", "specialty")
    run_step(ds, "tfidf", "tfidf", protocol="holdout", n_boot=100)
    (ref,) = results.list_evaluations()[0]
    with pytest.raises(ClinBenchError, match="no stored embeddings"):
        predict.nearest("Chest pain.", ref)
