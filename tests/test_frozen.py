"""The svc and logreg steps: sealed artifacts, cache hits, probabilities, and cache keys unchanged by the restructure."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from engine import artifacts, features, frozen, protocols
from engine.data import load_dataset
from engine.options import Options
from tests.conftest import run_step

FAST = {"max_length": 64, "n_boot": 200}


def test_evaluate_step_writes_checked_artifacts_and_caches(tiny_encoder, small_csv):
    ds = load_dataset(small_csv, "letter", "specialty")
    res = run_step(ds, tiny_encoder, "svc", **FAST)
    assert not res.cache_hit
    manifest = artifacts.read_manifest(res.artifact)
    for key in ("config", "versions", "data", "model", "timings", "metrics", "placement", "split"):
        assert key in manifest
    assert manifest["data"]["data_hash"] == ds.data_hash and manifest["model"]["weights_sha256"]
    clf = artifacts.load_joblib(res.artifact)
    assert len(clf.classes_) == 5
    again = run_step(ds, tiny_encoder, "svc", **FAST)
    assert again.cache_hit and again.metrics == res.metrics
    predictions = json.loads((Path(res.artifact) / "predictions.json").read_text())
    proba = np.asarray(predictions["scores"])
    assert predictions["score_kind"] == "probability" and np.allclose(proba.sum(1), 1, atol=1e-5)
    assert [predictions["classes"][i] for i in proba.argmax(1)] == predictions["y_pred"]
    assert manifest["predictor"] == "embedding-classifier" and manifest["classifier"]["calibration"]["method"] == "sigmoid"


# Keys computed by ClinBench 0.1 (before the options became dataclasses) for the same inputs: results stored then
# are found again, so nothing is recomputed after the upgrade. (svc and lora-svc changed on purpose: their classifier
# is now a calibrated SVC, so their keys carry that; logreg's did not change.)
IDENTITY = {"name": "tiny", "source": "local", "path": "/models/tiny", "weights_sha256": "ab" * 32}
GOLDEN_0_1 = {"embedding": "5d79bfa0638ba8426318a5f5a1deeabe", "eval-logreg": "75ebb305bca877de721bee35716a124e",
              "eval-svc": "77e1abd5432ace50a2c8e43d7f1dab19"}  # fmt: skip


def test_cache_keys_of_the_previous_version_are_kept(default_ds):
    opts = Options()
    ek = features.embedding_key(IDENTITY, "mean", 512, "bfloat16", default_ds.text_hash)
    assert ek == GOLDEN_0_1["embedding"]
    split = protocols.split(default_ds, 0.2, 0)
    assert frozen.evaluation_key(ek, "logreg", "logreg", opts, split.hash) == GOLDEN_0_1["eval-logreg"]
    assert frozen.evaluation_key(ek, "svc", "svc", opts, split.hash) != GOLDEN_0_1["eval-svc"]  # calibrated now
