"""One classifier interface whatever trained it: classes_, predict_proba(texts) (probabilities, always), predict, metadata."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from engine.errors import ArtifactError
from engine.methods import classifiers
from tests.conftest import run_step


@pytest.fixture
def trained(cache, small_csv, tiny_encoder):
    """Holdout evaluations, so the stored classifier is the one that made the stored test predictions (under cv the
    stored classifier is refitted on every letter)."""
    from engine.runs import experiment

    ds = experiment.DataSpec(str(small_csv), "letter", "specialty").load()
    fast = {"protocol": "holdout", "max_length": 64, "n_boot": 100}
    results = [run_step(ds, tiny_encoder, m, grid=False, **fast) for m in ("svc", "logreg")]
    results.append(run_step(ds, tiny_encoder, "linear-probe", epochs=1, **fast))
    results.append(run_step(ds, "tfidf", "tfidf", **fast))
    return ds, results


def test_every_classifier_answers_the_same_interface(trained):
    ds, results = trained
    for res in results:
        clf = classifiers.load(res.artifact)
        stored = json.loads((Path(res.artifact) / "predictions.json").read_text())
        idx = stored["test_index"][:10]
        texts = [ds.texts[i] for i in idx]
        proba = clf.predict_proba(texts)
        assert clf.classes_ == ds.classes == stored["classes"], res.method
        assert proba.shape == (10, len(ds.classes)) and np.allclose(proba.sum(1), 1, atol=1e-5) and (proba >= 0).all()
        assert clf.predict(texts) == [clf.classes_[i] for i in proba.argmax(1)]
        assert np.mean(np.asarray(clf.predict(texts)) == np.asarray(stored["y_pred"][:10])) >= 0.8, res.method
        assert np.allclose(proba, np.asarray(stored["scores"])[:10], atol=0.05), res.method  # bf16 batches differ a little
        meta = clf.metadata
        assert meta["method"] == res.method and meta["key"] == Path(res.artifact).name and 0 <= meta["macro_f1"] <= 1
        reads_all = res.method == "tfidf"  # a bag of words reads every word
        assert clf.truncated(["short letter", " ".join(["word"] * 200)]) == [False, not reads_all]


def test_a_tampered_classifier_is_refused(trained):
    _, results = trained
    folder = Path(results[0].artifact)
    with open(folder / "classifier.skops", "ab") as fh:
        fh.write(b"tampered")
    with pytest.raises(ArtifactError, match="does not match the hash"):
        classifiers.load(folder)


def test_an_artifact_without_a_classifier_is_refused(tmp_path):
    from engine.cache import artifacts

    folder = tmp_path / "adapted"
    artifacts.write(folder, {"kind": "domain-adaptation", "method": "domain-adapt", "metrics": {}}, lambda tmp: None)
    with pytest.raises(ArtifactError, match="holds no classifier"):
        classifiers.load(folder)
