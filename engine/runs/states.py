"""The states of runs and steps, as one enum, and how a run's state follows from its steps'.

A step moves queued -> running -> done | failed | cancelled | interrupted; `resume` moves the
restartable ones (interrupted, cancelled, failed) back to queued. A run's state is never stored:
it is derived from its steps (`run_status`), so the two cannot disagree. Values are plain strings
(a `StrEnum`), so the run store's columns and the JSON that outside scripts read are unchanged.
"""

from __future__ import annotations

from collections.abc import Iterable
from enum import StrEnum


class Status(StrEnum):
    """The state of a step, and (derived) of a run."""

    QUEUED = "queued"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"
    CANCELLED = "cancelled"
    INTERRUPTED = "interrupted"

    @property
    def final(self) -> bool:
        """Nothing more will happen unless the user resumes."""
        return self in FINAL

    @property
    def restartable(self) -> bool:
        """`resume` queues steps in this state again."""
        return self in RESTARTABLE


FINAL = frozenset({Status.DONE, Status.FAILED, Status.CANCELLED, Status.INTERRUPTED})
RESTARTABLE = frozenset({Status.INTERRUPTED, Status.CANCELLED, Status.FAILED})
# When several steps ended differently, the run shows the first of these that occurs.
_PRECEDENCE = (Status.INTERRUPTED, Status.CANCELLED, Status.FAILED)


def run_status(step_statuses: Iterable[str]) -> Status:
    """A run's state from its steps': running if a step runs (or some have finished and some wait), queued if none
    has started, else interrupted, cancelled, failed, done, in that order of precedence."""
    s = {Status(x) for x in step_statuses}
    if Status.RUNNING in s:
        return Status.RUNNING
    if Status.QUEUED in s:
        return Status.RUNNING if s & {Status.DONE, Status.FAILED} else Status.QUEUED
    for state in _PRECEDENCE:
        if state in s:
            return state
    return Status.DONE


def sql_list(states: Iterable[Status]) -> str:
    """States as a SQL list literal, e.g. ('interrupted', 'cancelled'), for IN clauses and CHECK constraints."""
    return "(" + ", ".join(f"'{s.value}'" for s in sorted(states, key=list(Status).index)) + ")"
