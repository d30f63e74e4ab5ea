"""scikit-learn estimators on embeddings: SMOTE adaptation, search inside training, calibrated probabilities, cache-key part."""

from __future__ import annotations

import sys
from collections import Counter

import numpy as np
import pytest

from engine.methods import estimators
from engine.options.groups import ClassifierOptions

NO_GRID = ClassifierOptions(grid=False)


def blobs(counts, dim=8, seed=0, spread=3.0):
    rng = np.random.default_rng(seed)
    X, y = [], []
    for k, n in enumerate(counts):
        X.append(rng.normal(loc=spread * k, size=(n, dim)))
        y += [f"c{k}"] * n
    return np.vstack(X), np.array(y)


def test_smote_adapts_k_to_the_smallest_class():
    X, y = blobs([40, 40, 3])
    res = estimators.fit(X, y, "svc", NO_GRID, seed=0)
    assert res.smote["k_used"] == 2 and not res.smote["skipped"]
    assert set(res.estimator.predict(X)) == {"c0", "c1", "c2"}


def test_smote_skips_a_single_letter_class():
    X, y = blobs([30, 30, 1])
    res = estimators.fit(X, y, "svc", NO_GRID, seed=0)
    assert res.smote["skipped"] and res.smote["k_used"] == 0
    assert res.calibration["folds"] == 0, "no CV is possible with a one-letter label: calibrated on the training letters"
    assert np.allclose(res.estimator.predict_proba(X).sum(1), 1)


def test_smote_does_not_crash_inside_cv_folds():
    # 4 letters in the rare class: inner 3-fold CV sees only 2-3 of them per training fold.
    X, y = blobs([50, 50, 4])
    res = estimators.fit(X, y, "svc", ClassifierOptions(grid=True), seed=0)
    assert res.inner_folds == 3 and res.best_params and res.inner_cv_macro_f1 > 0.5


def test_grid_search_never_sees_test_data():
    X, y = blobs([30, 30])
    res = estimators.fit(X[:40], y[:40], "logreg", ClassifierOptions(), seed=0)
    assert res.estimator.named_steps["scale"].n_samples_seen_ == 40  # refit on the 40 training rows only


@pytest.mark.parametrize("estimator", estimators.ESTIMATORS)
def test_every_estimator_gives_probabilities_and_predicts_the_most_probable_label(estimator):
    X, y = blobs([20, 20, 20], spread=1.0)
    est = estimators.fit(X, y, estimator, ClassifierOptions(), seed=0).estimator
    proba = est.predict_proba(X)
    assert proba.shape == (60, 3) and np.allclose(proba.sum(1), 1) and (proba >= 0).all()
    assert list(est.classes_) == ["c0", "c1", "c2"]
    assert (np.asarray(est.classes_)[proba.argmax(1)] == est.predict(X)).all()


def test_svc_is_calibrated_inside_its_training_data():
    X, y = blobs([40, 40], spread=0.3, seed=3)
    res = estimators.fit(X, y, "svc", ClassifierOptions(), seed=0)
    assert res.calibration == {"method": "sigmoid", "folds": 3, "on": "cross-validated decision values of the training letters"}
    final = res.estimator.calibrated_classifiers_[0].estimator
    assert final.named_steps["scale"].n_samples_seen_ == 80  # one final SVC on all the training letters
    # overlapping classes: calibrated probabilities are not all 0/1
    p = res.estimator.predict_proba(X)[:, 0]
    assert 0.05 < p.mean() < 0.95 and ((p > 0.1) & (p < 0.9)).any()


def test_with_more_than_two_labels_the_svc_s_most_probable_label_is_its_own_answer():
    """Platt's sigmoid per label, normalised, moved the most probable label towards the large labels (MTSamples, 40
    specialties: macro-F1 0.24-0.27 against 0.35-0.39 for the SVC's own answers). Temperature scaling keeps the order of
    the SVC's decision values: the answer is the SVC's, the probabilities stay calibrated ones."""
    X, y = blobs([80, 40, 12, 12, 12], spread=1.2, seed=5)  # overlapping labels of unequal sizes
    Xt, yt = blobs([40, 40, 40, 40, 40], spread=1.2, seed=6)
    res = estimators.fit(X, y, "svc", ClassifierOptions(), seed=0)
    assert res.calibration["method"] == "temperature" and res.calibration["folds"] == 3
    est = res.estimator
    svc = est.calibrated_classifiers_[0].estimator  # the one SVC fitted on every training letter
    own = np.asarray(est.classes_)[svc.decision_function(Xt).argmax(1)]
    proba = est.predict_proba(Xt)
    assert (est.predict(Xt) == own).all() and (np.asarray(est.classes_)[proba.argmax(1)] == own).all()
    assert np.allclose(proba.sum(1), 1) and 0.2 < proba.max(1).mean() < 0.99  # neither uniform nor all 0/1
    assert 0 < (own != yt).mean() < 0.6  # the labels overlap: a real test of the decision, not a separable toy
    two = estimators.fit(X[y != "c0"][:52], y[y != "c0"][:52], "svc", ClassifierOptions(), seed=0)
    assert two.calibration["method"] == "sigmoid"  # two labels: Platt's sigmoid, as before


def test_config_key_is_what_cache_keys_use():
    assert estimators.config_key("logreg", ClassifierOptions(), 0) == {
        "method": "logreg", "seed": 0, "smote": True, "class_weight": None, "grid": True, "inner_folds": 3, "k_neighbors": 5,
        "oversample_limit": 2.0, "search": "warm-started C path",
    }  # fmt: skip
    svc = estimators.config_key("svc", ClassifierOptions(), 0)
    assert svc["probabilities"] == estimators.SVC_PROBABILITIES and svc["smote_growth"] == estimators.SVC_SMOTE
    assert "smote_growth" not in estimators.config_key("svc", ClassifierOptions(smote=False), 0)


def test_class_weights_replace_smote_when_oversampling_would_multiply_the_letters():
    X, y = blobs([60, 10, 10])  # SMOTE would make 180 rows of 80: growth 2.25 > the default limit 2
    res = estimators.fit(X, y, "logreg", NO_GRID, seed=0)
    assert res.smote["enabled"] is False and res.smote["requested"] is True and res.smote["growth"] == 2.25
    assert "smote" not in res.estimator.named_steps and res.estimator.named_steps["clf"].class_weight == "balanced"
    X, y = blobs([30, 20, 20])  # growth 90 / 70 = 1.29: SMOTE as before
    res = estimators.fit(X, y, "logreg", NO_GRID, seed=0)
    assert res.smote["enabled"] is True and "smote" in res.estimator.named_steps
    assert res.estimator.named_steps["clf"].class_weight is None
    # the limit is an option: a higher one keeps SMOTE on the first letters; no SMOTE asked for: no weights either
    X, y = blobs([60, 10, 10])
    assert estimators.fit(X, y, "logreg", ClassifierOptions(grid=False, oversample_limit=3.0), seed=0).smote["enabled"] is True
    off = estimators.fit(X, y, "logreg", ClassifierOptions(grid=False, smote=False), seed=0)
    assert off.estimator.named_steps["clf"].class_weight is None and "instead" not in off.smote


def test_the_svc_keeps_smote_above_the_limit_since_its_calibration_would_undo_class_weights():
    X, y = blobs([60, 10, 10])  # growth 2.25 > 2: logreg weights its classes, the SVC still oversamples, up to the limit
    res = estimators.fit(X, y, "svc", NO_GRID, seed=0)
    assert res.smote["enabled"] is True and res.smote["k_used"] >= 1 and "instead" not in res.smote
    assert res.smote["raised_to"] == 50 and "capped" in res.smote  # 60 + 50 + 50 = 160 rows = 2 x 80 letters
    final = res.estimator.calibrated_classifiers_[0].estimator
    assert final.named_steps["clf"].class_weight is None and final.named_steps["smote"].growth_limit == 2.0


def test_smote_target_is_the_highest_common_count_within_the_growth_limit():
    assert estimators.smote_target([60, 10, 10], 2.0) == 50  # 60 + 50 + 50 = 160 = 2 x 80; 51 would make 162
    assert estimators.smote_target([60, 10, 10], None) == 60  # no limit: every label raised to the largest
    assert estimators.smote_target([60, 10, 10], 1000.0) == 60  # a limit above the growth: the same
    assert estimators.smote_target([60, 10, 10], 1.0) == 10  # no room: nothing to add
    assert estimators.smote_target([100, 40, 5, 5], 1.5) == 41  # 100 + 3 x 41 = 223 <= 225; 42 would make 226
    counts = [100, 40, 5, 5]
    for limit in (1.0, 1.2, 1.5, 2.0, 3.0, 4.0):
        t = estimators.smote_target(counts, limit)
        rows = sum(max(c, t) for c in counts)
        assert rows <= limit * sum(counts) or t == min(counts)
        assert t == max(counts) or sum(max(c, t + 1) for c in counts) > limit * sum(counts)  # the highest such count


def test_capped_smote_raises_the_smaller_labels_to_the_target_and_leaves_the_rest_as_smote_does():
    X, y = blobs([60, 10, 10])
    Xr, yr = estimators.AdaptiveSMOTE(random_state=0, growth_limit=2.0).fit_resample(X, y)
    assert Counter(yr.tolist()) == {"c0": 60, "c1": 50, "c2": 50}
    assert np.array_equal(Xr[: len(X)], X)  # the real letters kept, the synthetic ones added
    X, y = blobs([30, 20, 20])  # growth 1.29 <= 2: exactly SMOTE's own resampling, to the bit
    capped = estimators.AdaptiveSMOTE(random_state=0, growth_limit=2.0).fit_resample(X, y)
    plain = estimators.AdaptiveSMOTE(random_state=0).fit_resample(X, y)
    assert np.array_equal(capped[0], plain[0]) and np.array_equal(capped[1], plain[1])
    assert Counter(capped[1].tolist()) == {"c0": 30, "c1": 30, "c2": 30}


def test_the_balance_is_decided_on_the_training_letters_alone():
    y = np.array(["a"] * 60 + ["b"] * 10 + ["c"] * 10)
    assert estimators.balance(y, ClassifierOptions()).smote is False
    assert estimators.balance(y[:20].tolist() + y[60:].tolist(), ClassifierOptions()).smote is True  # 20/10/10: 1.5


@pytest.mark.parametrize("estimator", estimators.ESTIMATORS)
def test_a_fit_is_the_same_to_the_bit_twice_and_serial_or_parallel(estimator, monkeypatch):
    X, y = blobs([30, 12, 8], spread=1.0, seed=4)
    runs = []
    for jobs in (1, 1, 2):
        monkeypatch.setattr(estimators, "inner_jobs", lambda tasks, jobs=jobs: min(jobs, tasks))
        res = estimators.fit(X, y, estimator, ClassifierOptions(), seed=0)
        runs.append((res.best_params, res.inner_cv_macro_f1, res.estimator.predict_proba(X)))
    for params, score, proba in runs[1:]:
        assert params == runs[0][0] and score == runs[0][1] and np.array_equal(proba, runs[0][2])


def test_the_warm_started_path_chooses_c_as_an_independent_search_would():
    from sklearn.model_selection import GridSearchCV

    X, y = blobs([40, 25, 15], spread=0.8, seed=5)
    opts = ClassifierOptions(smote=False)
    res = estimators.fit(X, y, "logreg", opts, seed=0)
    cv = estimators.plans.splits_of(y, None, opts.inner_folds, 0)
    grid = GridSearchCV(estimators.build_pipeline("logreg", opts, 0), estimators.param_grid("logreg"), scoring="f1_macro", cv=cv)
    grid.fit(X, y)
    assert res.best_params == grid.best_params_ and abs(res.inner_cv_macro_f1 - grid.best_score_) < 0.01


def test_inner_jobs_follow_the_thread_budget(monkeypatch):
    monkeypatch.delitem(sys.modules, "torch", raising=False)
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    assert estimators.inner_jobs(5) == 1  # a pytest-xdist worker on 2 cores with 2 workers: serial
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    assert estimators.inner_jobs(5) == 3 and estimators.inner_jobs(2) == 2
