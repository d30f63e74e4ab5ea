"""The registry of methods: every method ClinBench can run, in display order, and the one call that runs a step.

Each method is declared in its own module (engine.methods.svc holds `svc`); this module lists them. The spec check, the
CLI's --method choices, the Runs form and every executor (the in-process runner, the background worker, the Ray task)
read this registry and call `run`, so a new method is its module plus one line here.
"""

from __future__ import annotations

from engine.cache.context import StepContext
from engine.methods import (
    adapt_svc,
    domain_adapt,
    few_shot,
    harness,
    instruct_lora,
    linear_probe,
    logreg,
    lora,
    lora_svc,
    setfit,
    svc,
    tfidf,
    zero_shot,
)
from engine.methods.base import Method

KINDS: dict[str, Method] = {
    k.name: k
    for k in (
        tfidf.METHOD,
        svc.METHOD,
        logreg.METHOD,
        linear_probe.METHOD,
        lora.METHOD,
        lora_svc.METHOD,
        domain_adapt.METHOD,
        adapt_svc.METHOD,
        setfit.METHOD,
        zero_shot.METHOD,
        few_shot.METHOD,
        instruct_lora.METHOD,
    )
}
# The methods that classify with frozen embeddings only: what the home page's default comparison runs.
FROZEN_EMBEDDING = (svc.METHOD.name, logreg.METHOD.name)


# The reference row of every comparison: the pseudo-model `tfidf` and its one method.
REFERENCE = (tfidf.MODEL, tfidf.METHOD.name)


def run(dataset, model: str, method: str, opts, ctx: StepContext | None = None):
    """One step: `method` of `model` on the letters `dataset` with the options `opts` (an engine.cache.artifacts.StepResult)."""
    kind = KINDS[method]
    if kind.produces == "model":
        return harness.produce(kind, dataset, model, opts, ctx)
    return harness.evaluate(kind, dataset, model, opts, ctx)


def require_task(method: str, dataset) -> None:
    """Refuse multi-label letters for a method that predicts one label per letter, naming those that take them."""
    from engine.errors import DataError

    if dataset.multi_label and not KINDS[method].label_sets:
        takes = ", ".join(k.name for k in KINDS.values() if k.label_sets)
        raise DataError(
            f"{method} predicts one label per letter and cannot score this multi-label dataset (several labels per letter, "
            f"or none). Methods for multi-label data: {takes}; or choose a label column with one label per letter."
        )


def names() -> list[str]:
    """The methods a spec may name, in display order."""
    return list(KINDS)


def get(name: str) -> Method:
    return KINDS[name]
