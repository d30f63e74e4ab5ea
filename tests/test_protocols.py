"""Protocols: cv folds and the hold-out split, duplicate groups, every class counted, the validation carve."""

from __future__ import annotations

import numpy as np
import pytest

from engine.data import dataset
from engine.errors import DataError
from engine.options.groups import ProtocolOptions
from engine.protocols import plans
from tests.conftest import write_csv


def _ds(tmp_path, rows, name="x.csv"):
    return dataset.load_dataset(write_csv(tmp_path / name, [{"text": t, "label": lab} for t, lab in rows]), "text", "label")


def _letters(n_per_class: dict, dup_of: dict | None = None) -> list[tuple[str, str]]:
    """Distinct letters per class; dup_of {i: j} makes row i an exact copy (case and punctuation changed) of row j."""
    rows = [(f"letter {lab} number {i} about {lab} findings", lab) for lab, n in n_per_class.items() for i in range(n)]
    for i, j in (dup_of or {}).items():
        rows[i] = (rows[j][0].upper() + " !!", rows[i][1])
    return rows


def test_cv_plan_every_letter_once_per_repeat_and_repeats_nest(default_ds):
    p2 = plans.plan(default_ds, ProtocolOptions(protocol="cv", cv_folds=5, cv_repeats=2, seed=3))
    assert p2.name == "cv" and len(p2.folds) == 10
    for r in range(2):
        tests = np.concatenate([f.test for f in p2.folds if f.repeat == r])
        assert sorted(tests) == list(range(len(default_ds))), "each letter in exactly one test fold per repeat"
    for f in p2.folds:
        assert not set(f.train) & set(f.test) and len(f.train) + len(f.test) == len(default_ds)
    p1 = plans.plan(default_ds, ProtocolOptions(protocol="cv", cv_folds=5, cv_repeats=1, seed=3))
    assert all(np.array_equal(a.test, b.test) for a, b in zip(p1.folds, p2.folds[:5])), "5x1 is the first repeat of 5x2"
    assert not np.array_equal(p2.folds[0].test, p2.folds[5].test), "repeats shuffle differently"
    again = plans.plan(default_ds, ProtocolOptions(protocol="cv", cv_folds=5, cv_repeats=2, seed=3))
    assert again.hash == p2.hash and plans.plan(default_ds, ProtocolOptions(protocol="cv", seed=4), "svc").hash != p2.hash


def test_method_defaults_for_repeats(default_ds):
    p = ProtocolOptions(protocol="cv")
    assert plans.plan(default_ds, p, "svc").n_repeats == 2 and plans.plan(default_ds, p, "lora").n_repeats == 1


def test_auto_chooses_cv_for_small_datasets_and_says_why(tmp_path, default_ds):
    small = _ds(tmp_path, _letters({"a": 30, "b": 20}))
    pl = plans.plan(small, ProtocolOptions(), "svc")
    assert pl.name == "cv" and "50 letters" in pl.reason
    big = plans.plan(default_ds, ProtocolOptions(), "svc")
    assert big.name == "holdout" and len(big.folds) == 1 and len(big.folds[0].test) == 120 and "600 letters" in big.reason


def test_duplicates_never_straddle_a_fold(tmp_path):
    rows = _letters({"a": 30, "b": 30}, dup_of={i: i - 1 for i in range(1, 60, 3)})
    ds = _ds(tmp_path, rows)
    groups = plans.groups_of(ds)
    assert len(set(groups)) < len(ds)
    for proto in ("cv", "holdout"):
        pl = plans.plan(ds, ProtocolOptions(protocol=proto, cv_repeats=2))
        for f in pl.folds:
            assert not set(groups[f.train]) & set(groups[f.test]), f"a duplicate group straddles {proto} fold {f}"
        fit, val = plans.carve(ds, pl.folds[0].train, pl.groups, 0.2, 0)
        assert not set(groups[fit]) & set(groups[val]) and sorted([*fit, *val]) == sorted(pl.folds[0].train)


def test_a_class_too_small_for_the_folds_is_refused_by_name(tmp_path):
    ds = _ds(tmp_path, _letters({"a": 20, "b": 20, "rare": 3}))
    with pytest.raises(DataError, match=r"'rare' \(3 letters\).*fewer folds"):
        plans.plan(ds, ProtocolOptions(protocol="cv", cv_folds=5))
    assert plans.plan(ds, ProtocolOptions(protocol="cv", cv_folds=3)).name == "cv"


def test_a_class_whose_copies_fill_one_fold_is_refused(tmp_path):
    # five letters of 'c', all copies of one: one group, so four test folds of five lack the class
    rows = _letters({"a": 20, "b": 20, "c": 5}, dup_of={41: 40, 42: 40, 43: 40, 44: 40})
    with pytest.raises(DataError, match=r"Class 'c' \(5 letters\) has no test letter"):
        plans.plan(_ds(tmp_path, rows), ProtocolOptions(protocol="cv", cv_folds=5))


def test_holdout_keeps_every_class_in_the_test_split(tmp_path):
    with pytest.raises(DataError, match="Every class must be scored"):
        plans.plan(_ds(tmp_path, _letters({"a": 40, "b": 40, "c": 2, "d": 2})), ProtocolOptions(protocol="holdout", test_size=0.1))


def test_preview_lists_classes_and_warns_on_small_data(tmp_path):
    pv = plans.preview(_ds(tmp_path, _letters({"a": 30, "b": 8})), ProtocolOptions(protocol="cv", cv_folds=4))
    assert pv["protocol"] == "cv" and {r["label"] for r in pv["classes"]} == {"a", "b"}
    text = " ".join(pv["warnings"])
    assert "38 letters is a small dataset" in text and "'b' (8)" in text


def test_a_plan_without_labels_per_class_hashes_as_before_so_stored_keys_hold(default_ds):
    # the hash of the default data's plans as versions before labels_per_class computed it: every key holds the plan hash
    assert plans.plan(default_ds, ProtocolOptions(), "svc").hash.startswith("94957505b15dbf98")
    assert plans.plan(default_ds, ProtocolOptions(protocol="cv"), "svc").hash.startswith("b37c17dd1bbb84a8")
    limited = plans.plan(default_ds, ProtocolOptions(labels_per_class=8), "svc")
    assert limited.hash != plans.plan(default_ds, ProtocolOptions(), "svc").hash and "at most 8 letters per label" in limited.reason
