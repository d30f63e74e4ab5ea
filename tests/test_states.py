"""Run and step states: one enum, the moves a step may make, a run's state derived from its steps'."""

from __future__ import annotations

import json

import pytest

from engine.runs.states import FINAL, RESTARTABLE, TRANSITIONS, IllegalTransition, Status, check_transition, run_status


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


def test_a_step_makes_only_the_listed_moves():
    assert set(TRANSITIONS) == set(Status)
    for state in RESTARTABLE:  # resume queues them again, and nothing else moves them
        assert TRANSITIONS[state] == {Status.QUEUED}
    assert TRANSITIONS[Status.DONE] == set() and TRANSITIONS[Status.RUNNING] == FINAL
    check_transition("queued", "running")
    check_transition("running", "interrupted")
    with pytest.raises(IllegalTransition, match=r"step 2 of run 7 cannot go from done to queued \(from done it may go to no other state"):
        check_transition("done", "queued", where="step 2 of run 7")
    with pytest.raises(IllegalTransition, match="from queued to done"):
        check_transition(Status.QUEUED, Status.DONE)
