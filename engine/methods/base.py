"""What a method is: `StepKind`, the entry the registry lists and every executor runs."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class StepKind:
    """One kind of step (a method): what the registry (engine.methods.registry) lists and runs.

    `run(dataset, model, method, options, ctx) -> engine.cache.artifacts.StepResult`; `reads` names the options it uses
    (the form shows them, tests check that each key option among them changes its cache key); `stage` is frozen
    (the pretrained model) or tuned; `produces` is "classifier" (an evaluation a Classify page can use) or "model"; `label_sets`: it takes multi-label
    data."""

    name: str
    title: str
    stage: str
    run: Callable
    reads: tuple[str, ...]
    produces: str = "classifier"
    label_sets: bool = False  # it scores multi-label data (several labels per letter, or none)
    # the methods whose artifacts it reuses (logreg: svc's embeddings; lora-svc: lora's adapters): in one run, an executor
    # that runs steps in parallel starts it after those steps of the same model, seed and training size (experiment.dependencies)
    after: tuple[str, ...] = ()
