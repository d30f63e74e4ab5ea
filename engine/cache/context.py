"""What a step may call while it runs (`StepContext`).

Every step receives one. It reports progress (`progress(done, total, unit)`), asks whether to stop
(`should_stop()`, or `check_stop(what)` that raises Cancelled), records metrics while training
(`log_metric(name, value, step)`) and logs (`logger`). Where these go is the caller's business:
the background worker writes them into the run store (engine.worker), the CLI draws progress bars,
a notebook passes nothing. The context also keeps every metric it was given, so a step can store
its curves with its result. `shards` (set by the Ray executor) says where an embedding extraction may send chunks of
its work: given a model name and placement, the `spread` that engine.features.extract takes, or None (this process alone).
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from engine.errors import Cancelled

Progress = Callable[[int, int, str], None]  # (done, total, unit/stage)
MetricSink = Callable[[str, float, int], None]  # (name, value, step)


class StepContext:
    """Progress, cancellation, metrics and a logger for one step. Every callback is optional."""

    def __init__(
        self,
        progress: Progress | None = None,
        should_stop: Callable[[], bool] | None = None,
        log_metric: MetricSink | None = None,
        logger: logging.Logger | None = None,
    ):
        self._progress, self._should_stop, self._log_metric = progress, should_stop, log_metric
        self.shards: Callable[[str, object], Callable | None] | None = None
        self.logger = logger or logging.getLogger("clinbench.step")
        self.metrics: dict[str, list[list[float]]] = {}

    def progress(self, done: int, total: int, unit: str) -> None:
        if self._progress:
            self._progress(done, total, unit)

    def should_stop(self) -> bool:
        return bool(self._should_stop and self._should_stop())

    def check_stop(self, message: str) -> None:
        """Raise Cancelled(message) if the step should stop now."""
        if self.should_stop():
            raise Cancelled(message)

    def labelled(self, label: str) -> StepContext:
        """This context for one training among several: progress lines and curve names carry `label` (e.g. 'fold 2/5')."""
        if not label:
            return self
        ctx = StepContext(
            progress=lambda done, total, unit: self.progress(done, total, f"{label}: {unit}"),
            should_stop=self.should_stop,
            log_metric=lambda name, value, step: self.log_metric(f"{name} · {label}", value, step),
            logger=self.logger,
        )
        ctx.shards = self.shards
        return ctx

    def log_metric(self, name: str, value: float, step: int) -> None:
        """Record one point of a curve (e.g. train_loss at optimiser step 40); kept here and passed on."""
        self.metrics.setdefault(name, []).append([int(step), float(value)])
        if self._log_metric:
            self._log_metric(name, float(value), int(step))


def ensure(ctx: StepContext | None) -> StepContext:
    """`ctx`, or a silent context when the caller gave none."""
    return ctx if ctx is not None else StepContext()
