"""Protocols: the stratified split, the validation carve, repeated CV of a fitting procedure."""

from __future__ import annotations

import numpy as np
import pytest

from engine import data, protocols
from engine.errors import DataError
from tests.conftest import write_csv
from tests.test_data import ROWS
from tests.test_estimators import blobs


def test_split_is_stratified_reproducible_and_hashed(default_ds):
    s1, s2 = protocols.split(default_ds, 0.2, seed=3), protocols.split(default_ds, 0.2, seed=3)
    assert np.array_equal(s1.test, s2.test) and s1.hash == s2.hash
    assert not set(s1.train) & set(s1.test) and len(s1.train) + len(s1.test) == len(default_ds)
    test_labels = [default_ds.labels[i] for i in s1.test]
    assert all(test_labels.count(c) == 24 for c in default_ds.classes)
    assert protocols.split(default_ds, 0.2, seed=4).hash != s1.hash


def test_split_refuses_too_small_test(tmp_path):
    ds = data.load_dataset(write_csv(tmp_path / "x.csv", ROWS), "text", "label")
    with pytest.raises(DataError, match="every label needs a letter"):
        protocols.split(ds, 0.1)


def test_validation_comes_from_the_training_split_only(default_ds):
    split, fit_idx, val_idx = protocols.three_way_split(default_ds, 0.2, 0, 0.15)
    assert set(val_idx).isdisjoint(split.test) and set(fit_idx).isdisjoint(split.test) and set(fit_idx).isdisjoint(val_idx)
    assert sorted([*fit_idx, *val_idx]) == sorted(split.train)
    assert np.array_equal(split.test, protocols.split(default_ds, 0.2, 0).test), "the test split is the frozen stage's"
    labels = np.asarray(default_ds.labels)
    assert set(labels[val_idx]) == set(labels), "validation is stratified: every label is in it"


def test_repeated_cv_runs_the_whole_procedure_per_fold():
    X, y = blobs([20, 20])
    seen = []

    def fit_predict(X_train, y_train, X_test):
        seen.append(len(X_train))
        return np.where(X_test[:, 0] > 1.5, "c1", "c0")

    cv = protocols.repeated_cv(X, y, fit_predict, seed=0, n_splits=4, n_repeats=2)
    assert len(cv["scores"]) == 8 and seen == [30] * 8 and 0.9 <= cv["mean"] <= 1.0 and cv["sd"] >= 0
