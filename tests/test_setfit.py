"""The setfit method: pairs and few-shot letters from the training letters only, a tiny encoder end to end, two labels
thresholded on a carve the encoder never learnt from, MiniLM few-shot."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from engine.cache import artifacts
from engine.cache.context import StepContext
from engine.data.dataset import load_dataset
from engine.evaluation import scoring
from engine.methods import classifiers, registry, setfit
from engine.options.groups import Options
from engine.protocols import plans
from tests.conftest import run_step

FAST = {"protocol": "holdout", "max_length": 32, "setfit_max_length": 16, "setfit_pairs": 24, "batch_size": 4, "n_boot": 100}


@pytest.fixture
def ds(small_csv):
    return load_dataset(small_csv, "letter", "specialty")


def test_pairs_come_from_the_given_letters_only_capped_balanced_and_seeded():
    labels = np.array(["a", "b", "c"] * 20)
    train = np.arange(0, 60, 2)  # every other letter: the rest are test letters
    pairs = setfit.draw_pairs(train, labels, 100, seed=3)
    assert len(pairs) == 100 and set(pairs[:, :2].ravel()) <= set(train.tolist())
    assert (pairs[:, 0] != pairs[:, 1]).all()
    assert ((labels[pairs[:, 0]] == labels[pairs[:, 1]]) == (pairs[:, 2] == 1)).all()
    assert pairs[:, 2].sum() == 50  # as many positive as negative pairs
    assert (setfit.draw_pairs(train, labels, 100, seed=3) == pairs).all()
    assert not (setfit.draw_pairs(train, labels, 100, seed=4) == pairs).all()
    small = setfit.draw_pairs(train[:6], labels, 10_000, seed=0)  # 15 distinct pairs: 3 positive (cycled), 12 negative
    assert len(small) == 24 and small[:, 2].sum() == 12 and len({tuple(r) for r in small[small[:, 2] == 1]}) == 3


def test_pairs_of_a_large_training_split_are_drawn_without_listing_them(monkeypatch):
    monkeypatch.setattr(setfit, "ENUMERATE_MAX", 100)
    labels = np.array(["a", "b"] * 50)
    pairs = setfit.draw_pairs(np.arange(80), labels, 40, seed=0)
    assert len(pairs) == 40 and pairs[:, 2].sum() == 20 and pairs[:, :2].max() < 80
    assert ((labels[pairs[:, 0]] == labels[pairs[:, 1]]) == (pairs[:, 2] == 1)).all()


def test_labels_per_class_draws_n_per_label_within_the_training_split():
    # the few shots are the plan's training letters (engine.protocols.plans.subsample; tests/test_learning_curve.py has the rest)
    labels = np.array(["a"] * 20 + ["b"] * 20 + ["c"] * 3)
    train = np.concatenate([np.arange(0, 10), np.arange(20, 35), np.arange(40, 42)])
    shots = plans.subsample(labels, train, 8, seed=1)
    assert set(shots.tolist()) <= set(train.tolist())
    assert Counter(labels[shots].tolist()) == {"a": 8, "b": 8, "c": 2}  # c has 2 training letters
    assert (plans.subsample(labels, train, 8, seed=1) == shots).all()
    assert not (plans.subsample(labels, train, 8, seed=2) == shots).all()
    assert (plans.subsample(labels, train, None, seed=1) == np.sort(train)).all()
    assert not hasattr(setfit, "draw_per_class"), "one draw, the plan's"


def test_setfit_is_registered_and_reads_its_options():
    kind = registry.get("setfit")
    assert kind.stage == "tuned" and kind.produces == "classifier"
    for name in ("setfit_pairs", "setfit_epochs", "setfit_max_length", "labels_per_class", "pooling", "max_length", "learning_rate"):
        assert name in kind.reads
    assert Options().protocol.resolved("setfit").cv_repeats == 1


def test_a_tiny_encoder_trains_end_to_end_and_its_classifier_loads(cache, ds, tiny_encoder):
    curves: dict[str, list] = {}
    seen: list[str] = []
    ctx = StepContext(progress=lambda d, t, unit: seen.append(unit), log_metric=lambda n, v, s: curves.setdefault(n, []).append(v))
    res = run_step(ds, tiny_encoder, "setfit", ctx=ctx, labels_per_class=4, **FAST)
    m = res.metrics
    assert not res.cache_hit and m["protocol"] == "holdout" and 0.0 <= m["macro_f1"] <= 1.0
    assert {"accuracy", "macro_f1_ci", "per_class", "train_rows", "test_rows"} <= set(m)
    assert curves.get("train_loss") and any("training epoch" in u for u in seen)
    man = res.manifest
    assert man["predictor"] == "tuned-encoder" and man["training"]["n_shots"] == 4 * len(ds.classes)
    assert man["training"]["n_pairs"] <= 24 and any(f.startswith("encoder/") for f in man["files"])
    # the few shots are the plan's training rows (4 per label), never a test row
    plan = plans.plan(ds, Options.parse({**FAST, "labels_per_class": 4}).protocol, "setfit")
    shots = plan.folds[0].train
    assert len(shots) == man["training"]["n_shots"] and not set(shots.tolist()) & set(plan.folds[0].test.tolist())
    assert m["train_rows"] == scoring.input_rows(ds, shots) and man["protocol"]["labels_per_class"] == 4

    clf = classifiers.load(res.artifact)
    proba = clf.predict_proba(ds.texts[:5])
    assert proba.shape == (5, len(ds.classes)) and np.allclose(proba.sum(1), 1.0)
    assert clf.classes_ == ds.classes and clf.metadata["method"] == "setfit"
    preds = json.loads((Path(res.artifact) / "predictions.json").read_text())
    test_pos = preds["test_index"][:5]
    stored = np.asarray(preds["scores"])[:5]
    assert np.allclose(clf.predict_proba([ds.texts[i] for i in test_pos]), stored, atol=2e-3)  # the stored encoder = the tuned one

    again = run_step(ds, tiny_encoder, "setfit", labels_per_class=4, **FAST)
    assert again.cache_hit and again.metrics["macro_f1"] == m["macro_f1"]
    assert artifacts.read_manifest(res.artifact)["key"] == Path(res.artifact).name


def test_setfit_under_cv_refits_on_every_letter(cache, ds, tiny_encoder):
    res = run_step(ds, tiny_encoder, "setfit", **{**FAST, "protocol": "cv", "cv_folds": 2, "setfit_pairs": 10, "labels_per_class": 2})
    assert res.manifest["refit"] == "every letter" and len(res.manifest["fold_trainings"]) == 2
    assert res.manifest["training"]["n_shots"] == 2 * len(ds.classes)  # the stored classifier: 2 per label of every letter
    assert res.metrics["n_scored"] == len(ds) and len(res.metrics["fold_macro_f1"]) == 2


@pytest.mark.slow
def test_minilm_with_eight_letters_per_label_beats_the_majority_baseline(cache, ds):
    res = run_step(
        ds, "minilm", "setfit", protocol="holdout", test_size=0.4, labels_per_class=8, setfit_pairs=80, max_length=128, n_boot=200
    )
    m = res.metrics
    print(
        f"MiniLM setfit (8 letters per label, 80 pairs, 128 tokens) macro-F1 {m['macro_f1']:.3f} vs majority {m['baseline']['macro_f1']:.3f}"
    )
    assert m["macro_f1"] > m["baseline"]["macro_f1"] + 0.2, m


def test_two_labels_choose_the_threshold_on_a_carve_the_encoder_never_learnt_from(cache, ds, tiny_encoder, monkeypatch):
    two = ds.without([i for i, lab in enumerate(ds.labels) if lab not in ds.classes[:2]])
    drawn: list[np.ndarray] = []
    draw = setfit.draw_pairs
    monkeypatch.setattr(setfit, "draw_pairs", lambda idx, *a, **k: drawn.append(np.asarray(idx)) or draw(idx, *a, **k))
    res = run_step(two, tiny_encoder, "setfit", **FAST)
    man, train = res.manifest, plans.plan(two, Options.parse(FAST).protocol, "setfit").folds[0].train
    val = np.asarray(man["training"]["val_index"])
    assert len(val) == man["training"]["n_val"] > 0 and set(val.tolist()) < set(train.tolist())
    assert set(drawn[0].tolist()) == set(train.tolist()) - set(val.tolist()), "the encoder learns from the rest only"
    assert man["training"]["n_shots"] == len(train) - len(val)
    assert man["decision"]["rule"] == "best-f1" and 0.0 <= man["decision"]["threshold"] <= 1.0
    assert res.metrics["threshold"] == man["decision"]["threshold"]
    clf = classifiers.load(res.artifact)
    assert clf.threshold == man["decision"]["threshold"] and clf.positive_label == man["decision"]["positive_label"]

    drawn.clear()
    argmax = run_step(two, tiny_encoder, "setfit", threshold_rule="most-probable", **FAST)
    assert "val_index" not in argmax.manifest["training"] and set(drawn[0].tolist()) == set(train.tolist())
    assert argmax.manifest["decision"]["rule"] == "most-probable" and Path(argmax.artifact).name != Path(res.artifact).name
