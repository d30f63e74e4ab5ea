"""Multi-label fine-tuning: linear-probe and lora train a sigmoid head with BCE, tune one threshold per label on their
validation letters, and store a classifier that predicts what the step scored; lora-svc runs on the tuned vectors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from engine.cache import artifacts
from engine.data.labels import indicator
from engine.features import extract
from engine.finetune import heads, loading
from engine.methods import classifiers, estimators
from engine.models.devices import choose
from tests.conftest import run_step
from tests.test_multilabel import multi_label_ds

FAST = {"protocol": "holdout", "test_size": 0.3, "max_length": 32, "n_boot": 100, "epochs": 2, "batch_size": 8, "learning_rate": 5e-3}


@pytest.fixture(scope="module")
def ml_ds(default_ds):
    return multi_label_ds(default_ds)


@pytest.fixture(scope="module")
def lora_ml(ml_ds, tiny_encoder):
    """The lora step on the multi-label letters, under holdout (trained once for this module)."""
    return run_step(ml_ds, tiny_encoder, "lora", **FAST)


def _predictions(res) -> dict:
    return json.loads((Path(res.artifact) / "predictions.json").read_text())


def test_lora_multilabel_scores_label_sets_with_a_bce_head(lora_ml, ml_ds):
    m = lora_ml.metrics
    assert m["task"] == "multi-label"
    for key in ("micro_f1", "micro_f1_ci", "macro_f1", "samples_f1", "hamming_loss", "per_label"):
        assert key in m
    pred = _predictions(lora_ml)
    assert all(isinstance(v, list) for v in pred["y_true"] + pred["y_pred"])
    assert [list(ml_ds.labels[i]) for i in pred["test_index"]] == pred["y_true"]
    manifest = artifacts.read_manifest(lora_ml.artifact)
    assert manifest["loss"]["name"] == "bce"
    pos_weight = manifest["loss"]["pos_weight"]  # class_weighted_loss is on by default
    assert list(pos_weight) == ml_ds.classes
    assert all(1 / heads.POS_WEIGHT_CAP <= w <= heads.POS_WEIGHT_CAP for w in pos_weight.values())
    assert manifest["classifier"]["problem_type"] == "multi_label_classification"
    curve = manifest["training"]["curve"]
    assert curve and {"train_loss", "val_micro_f1", "val_loss"} <= set(curve[0]) and "val_macro_f1" not in curve[0]
    # each label's own sigmoid probability: rows need not sum to 1, and the stored model's config says multi-label
    scores = np.asarray(pred["scores"])
    assert scores.shape == (len(pred["test_index"]), len(ml_ds.classes)) and not np.allclose(scores.sum(1), 1.0)
    clf = classifiers.load(lora_ml.artifact)
    assert loading.is_multi_label(clf.net.config)


def test_thresholds_are_tuned_on_the_validation_letters(lora_ml, ml_ds):
    manifest = artifacts.read_manifest(lora_ml.artifact)
    stored = manifest["decision"]["thresholds"]
    assert list(stored) == ml_ds.classes
    val = np.asarray(manifest["training"]["val_index"])
    test = np.asarray(_predictions(lora_ml)["test_index"])
    assert len(val) and set(val.tolist()).isdisjoint(test.tolist())
    net, tok, _ = loading.load_tuned_classifier(lora_ml.artifact)
    ids, _ = extract.tokenize(tok, ml_ds.texts, FAST["max_length"])
    Y = indicator(ml_ds.labels, ml_ds.classes)
    p_val = heads.sequence_proba(net, ids, val, tok.pad_token_id, choose())
    expected = [estimators.best_threshold(p_val[:, j], Y[val, j]) for j in range(len(ml_ds.classes))]
    assert [stored[c] for c in ml_ds.classes] == pytest.approx(expected, abs=1e-6)
    assert any(abs(t - 0.5) > 1e-3 for t in stored.values())  # not a fixed default
    # the test letters' probabilities would give other thresholds: they were not tuned there
    p_test = heads.sequence_proba(net, ids, test, tok.pad_token_id, choose())
    on_test = [estimators.best_threshold(p_test[:, j], Y[test, j]) for j in range(len(ml_ds.classes))]
    assert not np.allclose(on_test, expected)


def test_stored_classifier_reproduces_the_step_predictions(lora_ml, ml_ds):
    pred = _predictions(lora_ml)
    clf = classifiers.load(lora_ml.artifact)
    stored = artifacts.read_manifest(lora_ml.artifact)["decision"]["thresholds"]
    assert clf.thresholds is not None and clf.thresholds.tolist() == [stored[c] for c in clf.classes_]
    texts = [ml_ds.texts[i] for i in pred["test_index"]]
    assert np.allclose(clf.predict_proba(texts), np.asarray(pred["scores"]), atol=1e-5)
    assert [list(p) for p in clf.predict(texts)] == pred["y_pred"]


def test_lora_svc_runs_on_multilabel_data(lora_ml, ml_ds, tiny_encoder):
    res = run_step(ml_ds, tiny_encoder, "lora-svc", grid=False, **FAST)  # reuses the module's lora training
    assert res.metrics["task"] == "multi-label" and "micro_f1" in res.metrics
    manifest = artifacts.read_manifest(res.artifact)
    assert manifest["lora_artifact"] == lora_ml.artifact
    assert list(manifest["decision"]["thresholds"]) == ml_ds.classes
    pred = _predictions(res)
    clf = classifiers.load(res.artifact)
    assert clf.thresholds is not None
    texts = [ml_ds.texts[i] for i in pred["test_index"]]
    assert [list(p) for p in clf.predict(texts)] == pred["y_pred"]


def test_linear_probe_cv_trains_with_weighted_bce_and_keeps_each_folds_thresholds(ml_ds, tiny_encoder, monkeypatch):
    import torch

    seen = []
    bce = torch.nn.functional.binary_cross_entropy_with_logits

    def spy(logits, target, *args, **kwargs):
        seen.append((tuple(target.shape), torch.unique(target).tolist(), kwargs.get("pos_weight")))
        return bce(logits, target, *args, **kwargs)

    monkeypatch.setattr(torch.nn.functional, "binary_cross_entropy_with_logits", spy)
    opts = {**FAST, "protocol": "cv", "cv_folds": 3, "epochs": 1, "learning_rate": 1e-2}
    res = run_step(ml_ds, tiny_encoder, "linear-probe", **opts)
    assert res.metrics["task"] == "multi-label" and len(res.metrics["fold_micro_f1"]) == 3
    assert seen, "the multi-label head was not trained with BCE-with-logits"
    n = len(ml_ds.classes)
    assert all(shape[1] == n and set(values) <= {0.0, 1.0} for shape, values, _ in seen)
    manifest = artifacts.read_manifest(res.artifact)
    # the refit's pos_weight: negatives / positives of its fitting letters (every letter less its validation carve)
    val = set(manifest["training"]["val_index"])
    Y = indicator(ml_ds.labels, ml_ds.classes)[[i for i in range(len(ml_ds)) if i not in val]]
    expected = np.clip((len(Y) - Y.sum(0)) / np.maximum(Y.sum(0), 1), 1 / heads.POS_WEIGHT_CAP, heads.POS_WEIGHT_CAP)
    assert [manifest["loss"]["pos_weight"][c] for c in ml_ds.classes] == pytest.approx(expected.tolist(), rel=1e-5)
    assert seen[-1][2] is not None and np.allclose(seen[-1][2].cpu().numpy(), expected, rtol=1e-5)
    folds = manifest["decision"]["folds"]
    assert sorted(folds) == ["r0f0", "r0f1", "r0f2"] and all(list(t["thresholds"]) == ml_ds.classes for t in folds.values())
    clf = classifiers.load(res.artifact)  # the every-letter model, with its own thresholds
    assert clf.thresholds.tolist() == [manifest["decision"]["thresholds"][c] for c in ml_ds.classes]


def test_pos_weights_cap_and_switch_off():
    Y = np.array([[1, 0, 1], [0, 0, 1], [0, 0, 1], [0, 1, 1]] * 10, dtype=np.int8)
    w = heads.pos_weights(Y, True).numpy()
    assert w.tolist() == pytest.approx([3.0, 3.0, 1 / heads.POS_WEIGHT_CAP])
    rare = np.zeros((100, 1), dtype=np.int8)
    rare[0] = 1
    assert heads.pos_weights(rare, True).item() == pytest.approx(heads.POS_WEIGHT_CAP)
    assert heads.pos_weights(Y, False) is None


def test_validation_loss_stays_finite_when_sigmoids_saturate():
    proba = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]], dtype=np.float32)  # float32 sigmoids of large logits
    val = heads.multilabel_validation(proba, np.array([[1, 1], [0, 1], [1, 0]], dtype=np.int8))
    assert np.isfinite(val["val_loss"]) and np.isfinite(val["score"]) and val["val_micro_f1"] > 0
