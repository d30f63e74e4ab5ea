"""Time estimates before a run: from this machine's finished steps, scaled by letters and fits; none without history."""

from __future__ import annotations

import json
import time

import pytest

from engine import api
from engine.runs import estimates
from engine.runs.store import database as store


def _finished_step(run_id: int, model: str, method: str, seconds: float, result: dict, options: dict | None = None) -> None:
    now = time.time()
    with store.connect() as conn, store.transaction(conn):
        conn.execute(
            "INSERT INTO runs (id, name, spec, data_hash, created) VALUES (?, 'history', ?, 'x', ?)",
            (run_id, json.dumps({"options": options or {}}), now),
        )
        conn.execute(
            "INSERT INTO steps (run_id, idx, model, method, title, status, started, finished, result) "
            "VALUES (?, 0, ?, ?, 't', 'done', ?, ?, ?)",
            (run_id, model, method, now - seconds, now, json.dumps(result)),
        )


def _spec(small_csv, **options) -> dict:
    return {
        "name": "est",
        "data": {"path": str(small_csv), "text_column": "letter", "label_column": "specialty"},
        "models": ["tfidf"],
        "methods": ["tfidf"],
        "options": options,
    }


def test_no_history_gives_no_figure(cache, small_csv):
    (row,) = api.estimate(_spec(small_csv))
    assert row.seconds is None and "no finished tfidf · tfidf step" in row.basis


def test_the_rate_of_earlier_steps_scales_with_letters_and_fits(cache, small_csv):
    n = len(api.load_dataset(small_csv, "letter", "specialty"))
    # one earlier holdout step: 200 letters, 1 fit, 20 s -> 0.1 s per letter per fit
    _finished_step(1, "tfidf", "tfidf", 20.0, {"n_letters": 200, "protocol": "holdout", "cache_hit": False})
    # a cache hit says nothing about how long computing takes
    _finished_step(2, "tfidf", "tfidf", 0.5, {"n_letters": 200, "protocol": "holdout", "cache_hit": True})
    (hold,) = api.estimate(_spec(small_csv, protocol="holdout"))
    assert hold.seconds == pytest.approx(0.1 * n, rel=1e-3) and "1 earlier step" in hold.basis
    (cv,) = api.estimate(_spec(small_csv, protocol="cv", cv_folds=3, cv_repeats=2))
    assert cv.seconds == pytest.approx(0.1 * n * (3 * 2 + 1), rel=1e-3)  # six folds and the refit


def test_fits_of_a_stored_result():
    assert estimates.fits({"protocol": "cv", "folds": [{}] * 10}) == 11
    assert estimates.fits({"protocol": "holdout"}) == 1


def test_steps_at_the_same_max_length_are_preferred(cache, small_csv):
    n = len(api.load_dataset(small_csv, "letter", "specialty"))
    _finished_step(1, "tfidf", "tfidf", 10.0, {"n_letters": 100, "protocol": "holdout"}, {"max_length": 128})
    (other,) = api.estimate(_spec(small_csv, protocol="holdout", max_length=256))
    assert other.seconds == pytest.approx(0.1 * n, rel=1e-3) and "another max_length" in other.basis
    _finished_step(2, "tfidf", "tfidf", 40.0, {"n_letters": 100, "protocol": "holdout"}, {"max_length": 256})
    (same,) = api.estimate(_spec(small_csv, protocol="holdout", max_length=256))
    assert same.seconds == pytest.approx(0.4 * n, rel=1e-3) and "another" not in same.basis
