"""The states of runs and steps, as one enum; the moves a step may make; how a run's state follows from its steps'.

A step moves queued -> running -> done | failed | cancelled | interrupted; a queued step can also be cancelled, or
fail when its executor cannot start it (an unreachable Ray cluster); `resume` moves the restartable ones (interrupted,
cancelled, failed) back to queued. `TRANSITIONS` lists every legal move and `check_transition` refuses any other
(IllegalTransition); the run store's `RunStore.move` is the one place that changes a step's state, and it asks here
first. A run's state is never stored: it is derived from its steps (`run_status`), so the two cannot disagree.
Values are plain strings (a `StrEnum`), so the run store's columns and the JSON that outside scripts read are unchanged.
"""

from __future__ import annotations

from collections.abc import Iterable
from enum import StrEnum

from engine.errors import ClinBenchError


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
# Every move a step may make: from each state, the states it may go to next.
TRANSITIONS: dict[Status, frozenset[Status]] = {
    Status.QUEUED: frozenset({Status.RUNNING, Status.CANCELLED, Status.FAILED}),  # claimed; cancelled; its executor cannot start it
    Status.RUNNING: frozenset({Status.DONE, Status.FAILED, Status.CANCELLED, Status.INTERRUPTED}),
    Status.DONE: frozenset(),  # a finished step is never redone: its result stays
    Status.FAILED: frozenset({Status.QUEUED}),  # resume
    Status.CANCELLED: frozenset({Status.QUEUED}),
    Status.INTERRUPTED: frozenset({Status.QUEUED}),
}
# When several steps ended differently, the run shows the first of these that occurs.
_PRECEDENCE = (Status.INTERRUPTED, Status.CANCELLED, Status.FAILED)


class IllegalTransition(ClinBenchError):
    """A step was asked to move between two states that TRANSITIONS does not connect; nothing was written."""


def check_transition(current: str, target: str, where: str = "a step") -> None:
    """Refuse (IllegalTransition) a move that TRANSITIONS does not list; `where` names the step in the message."""
    current, target = Status(current), Status(target)
    if target not in TRANSITIONS[current]:
        allowed = ", ".join(sorted(TRANSITIONS[current])) or "no other state (a finished step keeps its result)"
        raise IllegalTransition(
            f"{where} cannot go from {current} to {target} (from {current} it may go to {allowed}); nothing was written. "
            "This is a bug in ClinBench: please report it with the run log."
        )


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
