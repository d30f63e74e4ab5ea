"""What runs on the Ray cluster for one step (engine.rayexec is the driver that sends it).

* `run_task`: the body of a step's Ray task: stepcall.call with a StepContext whose progress, curves and stop flag go
  through the `Relay` actor (never through the run store, which only the driver opens); the step's printed output is
  captured and returned with its outcome, for the driver to append to the run log.
* `Relay`: the actor between running tasks and the driver: tasks report events and ask whether to stop; the driver
  drains the events and sets the stop flags.
* `resources`: what one step's task asks of the cluster (CPUs, which are also its torch thread count; GPUs).
"""

from __future__ import annotations

import contextlib
import io
import os
import socket
import time

from engine.cache.context import StepContext
from engine.runs import ray_shards, stepcall

STOP_CHECK_EVERY_S = 0.25


class Relay:
    """A Ray actor between running tasks and the driver: tasks report events and ask whether to stop; the driver drains."""

    def __init__(self):
        self.events: list[tuple] = []
        self.stopping: set[int] = set()

    def report(self, *event) -> None:
        self.events.append(event)

    def drain(self) -> list[tuple]:
        out, self.events = self.events, []
        return out

    def stop(self, run_id: int) -> None:
        self.stopping.add(run_id)

    def should_stop(self, run_id: int) -> bool:
        return run_id in self.stopping


class _RelayStop:
    """should_stop() for a task: asks the relay at most every STOP_CHECK_EVERY_S."""

    def __init__(self, relay, run_id: int):
        self.relay, self.run_id, self.t_check, self.stop = relay, run_id, 0.0, False

    def __call__(self) -> bool:
        import ray

        now = time.monotonic()
        if not self.stop and now - self.t_check >= STOP_CHECK_EVERY_S:
            self.t_check = now
            self.stop = bool(ray.get(self.relay.should_stop.remote(self.run_id)))
        return self.stop


def run_task(spec_json: str, data_hash: str, run_id: int, idx: int, relay, threads: int, shards: dict | None = None) -> dict:
    """The body of one step's Ray task: stepcall.call with a context that reports through the relay. Returns the outcome,
    with the step's output (`log`) and the node it ran on. `shards` ({n, num_cpus, num_gpus}, n > 1): the step's embedding
    extraction is split into n shards, n - 1 of them Ray tasks (engine.runs.ray_shards)."""
    import ray
    import torch

    torch.set_num_threads(threads)  # the same count wherever it runs: results do not depend on the executor
    key = (run_id, idx)
    node = f"{socket.gethostname()} ({ray.util.get_node_ip_address()})"
    relay.report.remote("started", key, node, os.getpid(), time.time())
    ctx = StepContext(
        stepcall.Rate(lambda *p: relay.report.remote("progress", key, *p)),
        _RelayStop(relay, run_id),
        lambda name, value, step: relay.report.remote("metric", key, name, value, step, time.time()),
    )
    if shards and shards["n"] > 1:
        ctx.shards = lambda model, placement: ray_shards.spreader(
            model, placement, shards["n"], shards["num_cpus"], shards["num_gpus"], threads
        )
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf), contextlib.redirect_stderr(buf):
        outcome = stepcall.call(spec_json, data_hash, idx, ctx, where=f"run {run_id}")
    return {**outcome, "log": buf.getvalue()[-50_000:], "node": node}


def resources(step: dict, opts, cluster_gpus: float) -> dict:
    """What one step's task asks of the cluster: step_cpus CPUs; step_gpus GPUs, or by default one GPU for a step that runs a
    neural model (every method but the tf-idf reference) when the cluster has a GPU."""
    from engine.methods.registry import REFERENCE

    e = opts.execution
    gpus = e.step_gpus if e.step_gpus is not None else (1.0 if cluster_gpus >= 1 and step["model"] != REFERENCE[0] else 0.0)
    return {"num_cpus": e.step_cpus, "num_gpus": gpus}


def shards(opts, res: dict) -> dict | None:
    """How one step's embedding extraction is split (extract_shards > 1), each shard asking what the step asks (`res`)."""
    n = opts.execution.extract_shards
    return {"n": n, **res} if n > 1 else None
