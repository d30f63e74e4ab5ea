"""One embedding extraction sharded over a Ray cluster: the chunks of engine.features.extract spread over Ray tasks.

`spreader(model, placement, shards, num_cpus, num_gpus, threads)` gives the `spread` that extract takes (a Ray step's
StepContext offers it as `ctx.shards` when its run asks for extract_shards > 1). Of the chunks not sealed yet, every
`shards`-th (round robin: the plan runs longest letters first, so each shard gets long and short ones alike) stays with
the step's own process, which has the model loaded already; the others go to shards - 1 Ray tasks, each asking for
`num_cpus` CPUs (its torch thread count too, as the step's) and `num_gpus` GPUs. A shard loads the model by name, checks
that it is the step's (same identity), embeds its chunks from their token ids (the letters' text never travels) and
seals each into the chunks folder as it completes (engine.cache.chunks, in the shared cache). The step then merges every
chunk in the plan's order: the array is, bit for bit, the one a local run writes.

A shard whose worker dies is run again once by Ray, keeping the chunks it had sealed; a shard that fails leaves its
missing chunks to the step, which embeds them itself; a cancel stops the shards (their Ray tasks are killed).
"""

from __future__ import annotations

from pathlib import Path

from engine.cache.chunks import Parts
from engine.cache.context import StepContext
from engine.errors import Cancelled, ClinBenchError
from engine.features import extract
from engine.models import catalog

SHARD_RETRIES = 1
POLL_S = 0.25


def embed_shard(model: str, placement, plan: extract.Plan, todo: list[int], folder: str, n_chunks: int, threads: int) -> list[int]:
    """The body of one shard's Ray task: load `model`, embed the chunks `todo` of `plan` (its rows only) and seal each."""
    import torch

    torch.set_num_threads(threads)
    loaded = catalog.load(model, placement)
    identity = {k: v for k, v in loaded.identity.items() if k not in ("model_type", "kind")}
    if identity != plan.identity:
        raise ClinBenchError(
            f"The model {model!r} on this Ray node is not the step's ({identity} vs {plan.identity}): every node needs the same "
            "model files (the same checkout and cache, see docs/scale-out.md)."
        )
    parts = Parts(Path(folder), plan.hash, n_chunks)
    sealed = parts.sealed()  # (a retried shard keeps what it had sealed)
    for i in todo:
        if i not in sealed:
            parts.seal(i, extract.embed_chunk(loaded, plan, plan.chunks[i], plan.pooling))
    return todo


def _shard_plan(plan: extract.Plan, todo: list[int]) -> extract.Plan:
    """`plan` cut to the rows of the chunks `todo`: what one shard needs, sent to its task."""
    rows = {i for c in todo for batch in plan.chunks[c] for i in batch}
    chunks = [plan.chunks[c] if c in todo else [] for c in range(len(plan.chunks))]
    return extract.Plan(
        {i: plan.ids[i] for i in rows}, None, {i: plan.lengths[i] for i in rows}, chunks, 0, plan.hash, plan.pooling, plan.identity
    )


def spreader(model: str, placement, shards: int, num_cpus: float, num_gpus: float, threads: int):
    """The `spread` for engine.features.extract that sends all but one share of the chunks to shards - 1 Ray tasks."""
    if shards <= 1:
        return None

    def spread(plan: extract.Plan, pending: list[int], parts: Parts, ctx: StepContext):
        import ray

        task = ray.remote(max_calls=1)(embed_shard)
        refs = []
        for k in range(1, shards):
            todo = pending[k::shards]
            if todo:
                refs.append(
                    task.options(num_cpus=num_cpus, num_gpus=num_gpus, max_retries=SHARD_RETRIES).remote(
                        model, placement, _shard_plan(plan, todo), todo, str(parts.folder), len(plan.chunks), threads
                    )
                )
        ctx.logger.info(
            "extraction: %d of %d chunks sent to %d Ray shard(s)", len(pending) - len(pending[::shards]), len(pending), len(refs)
        )
        return pending[::shards], lambda give_up: _wait(refs, plan, parts, ctx, give_up)

    return spread


def _wait(refs: list, plan: extract.Plan, parts: Parts, ctx: StepContext, give_up: bool) -> None:
    """Until every shard has ended (its chunks sealed, or it failed: the step embeds those), reporting the chunks sealed;
    a cancel or `give_up` kills the shards still running."""
    import ray
    from ray import exceptions as rx

    left = list(refs)
    try:
        while left and not give_up:
            done, left = ray.wait(left, num_returns=len(left), timeout=POLL_S)
            for ref in done:
                try:
                    ray.get(ref)
                except rx.RayError as exc:  # the step embeds the chunks this shard did not seal
                    ctx.logger.warning(
                        "an extraction shard failed (%s); this step embeds its chunks", (str(exc).splitlines() or [""])[0][:300]
                    )
            sealed = parts.listed()
            rows = sum(len(b) for i in sealed for b in plan.chunks[i])
            ctx.progress(rows, sum(len(b) for c in plan.chunks for b in c), f"embedding: {len(sealed)} of {len(plan.chunks)} chunks sealed")
            if ctx.should_stop():
                raise Cancelled(
                    f"Embedding extraction was cancelled; {len(sealed)} of {len(plan.chunks)} chunks are sealed and a rerun resumes after them."
                )
    finally:
        for ref in left:
            ray.cancel(ref, force=True)
