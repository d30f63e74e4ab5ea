"""What the command line draws on a terminal: one progress bar per stage of a step (tqdm, on stderr)."""

from __future__ import annotations

import sys

from engine.context import StepContext


def progress_bars():
    """A StepContext drawing one tqdm bar per stage on stderr."""
    from tqdm import tqdm

    state = {"bar": None, "stage": None}

    def progress(done: int, total: int, stage: str) -> None:
        if state["stage"] != stage:
            if state["bar"] is not None:
                state["bar"].close()
            state["bar"] = tqdm(total=total, desc=stage, unit="letter" if total > 1 else "step", leave=False, file=sys.stderr, disable=None)
            state["stage"] = stage
        bar = state["bar"]
        bar.total, bar.n = total, done
        bar.refresh()
        if done >= total and stage in ("done", "loaded from cache"):
            bar.close()

    return StepContext(progress=progress)
