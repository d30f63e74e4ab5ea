"""The svc and logreg steps: sealed artifacts, cache hits, probabilities, and cache keys unchanged by the restructure."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from engine.cache import artifacts
from engine.cache.estimator_files import load_estimator
from engine.data.dataset import load_dataset
from engine.features import extract
from engine.methods import vectors
from engine.options.groups import Options
from engine.protocols import plans
from tests.conftest import run_step

FAST = {"max_length": 64, "n_boot": 200}


def test_evaluate_step_writes_checked_artifacts_and_caches(tiny_encoder, small_csv):
    ds = load_dataset(small_csv, "letter", "specialty")
    res = run_step(ds, tiny_encoder, "svc", **FAST)
    assert not res.cache_hit
    manifest = artifacts.read_manifest(res.artifact)
    for key in ("config", "versions", "environment", "data", "model", "timings", "metrics", "placement", "protocol"):
        assert key in manifest
    assert manifest["data"]["data_hash"] == ds.data_hash and manifest["model"]["weights_sha256"]
    clf = load_estimator(res.artifact)
    assert len(clf.classes_) == 5
    again = run_step(ds, tiny_encoder, "svc", **FAST)
    assert again.cache_hit and again.metrics == res.metrics
    predictions = json.loads((Path(res.artifact) / "predictions.json").read_text())
    proba = np.asarray(predictions["scores"])
    assert predictions["score_kind"] == "probability" and np.allclose(proba.sum(1), 1, atol=1e-5)
    assert [predictions["classes"][i] for i in proba.argmax(1)] == predictions["y_pred"]
    assert manifest["predictor"] == "embedding-classifier" and manifest["classifier"]["calibration"]["method"] == "temperature"


# Cache keys pinned for the same inputs, so a change that would silently recompute (or, worse, wrongly reuse) stored
# results shows up here. Embedding keys are those of ClinBench 0.1: vectors stored then are still found. Evaluation keys
# changed on purpose in 0.3 (cross-validation plans, duplicate groups): they now carry the plan's hash; and again when
# svc/logreg began weighting labels where SMOTE would multiply the letters (oversample_limit) and logreg's C search
# became a warm-started path: their results changed, so stored ones must not be reused; svc's again when its SMOTE was
# capped at oversample_limit (its results change where SMOTE would grow the letters more); and again when its
# probabilities over more than two labels came from temperature scaling instead of a sigmoid per label.
IDENTITY = {"name": "tiny", "source": "local", "path": "/models/tiny", "weights_sha256": "ab" * 32}
GOLDEN = {"embedding": "5d79bfa0638ba8426318a5f5a1deeabe", "eval-logreg": "ffbedc256e6f2cf103608d9bd977b840",
          "eval-svc": "f524cae133d425dbbb3c1de23c4a7e2d"}  # fmt: skip


def test_cache_keys_are_pinned(default_ds):
    opts = Options()
    ek = extract.embedding_key(IDENTITY, "mean", 512, "bfloat16", default_ds.text_hash)
    assert ek == GOLDEN["embedding"]
    plan = plans.plan(default_ds, opts.protocol, "logreg")
    assert vectors.evaluation_key(ek, "logreg", "logreg", opts, plan.hash) == GOLDEN["eval-logreg"]
    assert vectors.evaluation_key(ek, "svc", "svc", opts, plan.hash) == GOLDEN["eval-svc"]
