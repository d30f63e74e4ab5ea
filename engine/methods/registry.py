"""The registry of step kinds: every method ClinBench can run, in display order.

Each method declares its `StepKind` (name, title, stage, the function that runs it, the options it
reads) next to its code; this module lists them. The spec check, the CLI's --method choices, the
Runs form and every executor (the in-process runner, the background worker) read this registry, so
a new method is its module plus one line here.
"""

from __future__ import annotations

from engine.methods import frozen
from engine.methods.adapt_svc import ADAPT_SVC
from engine.methods.base import StepKind
from engine.methods.domain_adapt import DOMAIN_ADAPT
from engine.methods.frozen import LOGREG, SVC
from engine.methods.incontext import FEW_SHOT, ZERO_SHOT
from engine.methods.instruct_lora import INSTRUCT_LORA
from engine.methods.linear_probe import LINEAR_PROBE
from engine.methods.lora import LORA
from engine.methods.lora_svc import LORA_SVC
from engine.methods.setfit import SETFIT
from engine.methods.tfidf import MODEL as REFERENCE_MODEL
from engine.methods.tfidf import TFIDF

KINDS: dict[str, StepKind] = {
    k.name: k
    for k in (TFIDF, SVC, LOGREG, LINEAR_PROBE, LORA, LORA_SVC, DOMAIN_ADAPT, ADAPT_SVC, SETFIT, ZERO_SHOT, FEW_SHOT, INSTRUCT_LORA)
}
# The methods that classify with frozen embeddings only: what the home page's default comparison runs.
FROZEN_EMBEDDING = tuple(frozen.KINDS)


# The reference row of every comparison: the pseudo-model `tfidf` and its one method.
REFERENCE = (REFERENCE_MODEL, TFIDF.name)


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


def get(name: str) -> StepKind:
    return KINDS[name]
