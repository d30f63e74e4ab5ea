"""Run and step states: one enum, a run's state derived from its steps'."""

from __future__ import annotations

import json

from engine.runs.states import FINAL, RESTARTABLE, Status, run_status, sql_list


def test_a_run_state_follows_from_its_steps():
    assert run_status(["queued", "queued"]) == Status.QUEUED
    assert run_status(["done", "queued"]) == Status.RUNNING  # some finished, some wait: the run is under way
    assert run_status(["done", "running"]) == Status.RUNNING
    assert run_status(["done", "failed", "cancelled", "interrupted"]) == Status.INTERRUPTED
    assert run_status(["done", "failed", "cancelled"]) == Status.CANCELLED
    assert run_status(["done", "failed"]) == Status.FAILED
    assert run_status(["done", "done"]) == Status.DONE


def test_states_are_plain_strings_where_scripts_read_them():
    assert json.dumps({"status": Status.DONE}) == '{"status": "done"}' and Status("failed") == "failed"
    assert {s for s in Status if s.final} == FINAL and {s for s in Status if s.restartable} == RESTARTABLE
    assert sql_list(RESTARTABLE) == "('failed', 'cancelled', 'interrupted')"
