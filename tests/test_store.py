"""The run store: a store and results written by the previous version (schema 1, ClinBench 0.1) open after the
upgrade, migrated to schema 2, with every finished run and its results shown."""

from __future__ import annotations

import shutil
import sqlite3

import pytest

from engine import api
from engine.runs.store import database as store
from tests.conftest import ROOT

LEGACY = ROOT / "tests" / "fixtures" / "legacy-v0.1-cache"


@pytest.fixture
def legacy_cache(tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    shutil.copytree(LEGACY, cache)
    monkeypatch.setenv("CLINBENCH_CACHE", str(cache))
    return cache


def test_a_store_of_the_previous_version_is_migrated_and_its_run_still_shows(legacy_cache):
    with sqlite3.connect(legacy_cache / "runs" / "runs.sqlite") as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == 1
    (run,) = api.list_runs()
    assert run.status == "done" and [s.method for s in run.steps] == ["svc", "logreg"]
    assert all(s.result["macro_f1"] > 0.5 for s in run.steps) and run.steps[0].detail.startswith("macro-F1 0.680")
    with sqlite3.connect(legacy_cache / "runs" / "runs.sqlite") as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == store.SCHEMA_VERSION == 3
        assert conn.execute("SELECT COUNT(*) FROM metrics").fetchone()[0] == 0
    shown = api.get_run(run.id).to_dict()
    assert shown["executor"] == "local" and shown["steps"][0]["node"] is None  # columns of version 3, filled for an old run
    assert shown["status"] == "done" and shown["steps"][1]["result"]["macro_f1"] == pytest.approx(0.7333, abs=1e-4)


def test_results_of_the_previous_version_are_compared_and_classified(legacy_cache):
    evals, skipped = api.evaluations(run_id=1)
    assert not skipped and {e.method for e in evals} == {"svc", "logreg"}
    table = api.comparison_table(evals)
    assert list(table["method"]) == ["logreg", "svc"] and len(api.significance(evals)) == 1
    before = {r["method"]: r for r in api.classify("Chest pain radiating to the left arm.", evals)}
    assert all("pickle" in r["error"] and "--convert-pickles" in r["error"] for r in before.values())  # not loaded unasked
    assert sorted(api.convert_pickles(evals)) == sorted(e.key for e in evals)  # the user's confirmation (CLI flag, Classify button)
    rows = {r["method"]: r for r in api.classify("Chest pain radiating to the left arm; troponin raised; ECG shows ST elevation.", evals)}
    assert rows["logreg"]["error"] is None and 0 < rows["logreg"]["score"] <= 1  # the stored logistic regression still answers
    assert rows["svc"]["predicted"] is None and "uncalibrated SVC" in rows["svc"]["error"] and "re-run" in rows["svc"]["error"]
