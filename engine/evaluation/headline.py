"""The headline score: the one figure every page, download, report and log line leads with for a task. Single-label and
two-label tasks: macro-F1; several labels per letter (multi-label): micro-F1. A reader may choose another of the scores
that carry a 95% CI (`SCORES`); then that choice is the headline everywhere it is passed."""

from __future__ import annotations

SCORES = {"macro_f1": "macro-F1", "micro_f1": "micro-F1", "samples_f1": "samples-F1"}  # key in the metrics -> its name
DEFAULT = {"multi-label": "micro_f1"}  # task -> headline; every other task: macro_f1


def metric(task: str | None, chosen: str | None = None) -> str:
    """The headline's key in the metrics: `chosen` when it is one of SCORES (and the task has it), else the task's own."""
    if chosen in SCORES and (task == "multi-label" or chosen == "macro_f1"):
        return chosen
    return DEFAULT.get(task or "single-label", "macro_f1")


def of(m: dict, chosen: str | None = None) -> tuple[str, float | None, list | None]:
    """(name, value, 95% CI or None) of the headline of the metrics `m` (a manifest's metrics, or a run step's summary)."""
    key = metric(m.get("task"), chosen)
    return SCORES[key], m.get(key), m.get(f"{key}_ci")


def text(m: dict, chosen: str | None = None) -> str:
    """'micro-F1 0.654 (95% CI 0.611–0.695)': the headline in words, as log lines and progress lines write it."""
    name, value, ci = of(m, chosen)
    if value is None:
        return ""
    return f"{name} {value:.3f}" + (f" (95% CI {ci[0]:.3f}–{ci[1]:.3f})" if ci and None not in ci[:2] else "")
