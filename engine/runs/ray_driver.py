"""The Ray executor: a driver process that sends the steps of `executor: ray` runs to a Ray cluster as tasks.

`python -m engine worker --executor ray` (started on demand by engine.runs.launch; one per run store) registers in the
store as a worker of kind ray, connects to a cluster (--ray-address, else the oldest queued run's ray_address, else
$RAY_ADDRESS: a remote cluster is only ever the user's explicit choice; with none it starts a new local Ray instance, its
object store capped, that stops when the driver leaves) and loops until stopped or idle:

* claims the queued steps whose inputs are ready (experiment.dependencies: logreg waits for the svc step whose embeddings
  it reuses, lora-svc for its lora step) and submits each as a task with its resources (`resources`: step_cpus CPUs,
  also its torch thread count, so results do not depend on the executor; a GPU for a neural step when the cluster has
  one). Independent steps (models x methods x seeds) run in parallel as far as the cluster's resources allow. With
  extract_shards > 1, a step's embedding extraction is split into that many shards, the others Ray tasks asking for the
  same resources (engine.runs.ray_shards).
* moves what the tasks report through a relay actor (the node and pid a step started on, progress, curves) into the
  store. The driver is the only process that opens the SQLite store: remote steps never do (SQLite's WAL is unsafe on
  network filesystems).
* passes a cancel on: the relay's stop flag stops a step at its next batch boundary (StepContext.should_stop); one not
  stopped after CANCEL_GRACE_S is force-cancelled (its Ray worker process is killed). A queued task is cancelled at once.
* records each outcome as the local worker does (engine.stepcall), with the task's output appended to the run log. Ray
  retries a task whose worker process died TASK_RETRIES time(s) (files are written atomically, so nothing half-written is
  reused), then the step is reported failed.

Every task runs in a fresh Ray worker process (max_calls=1), so a large model's memory goes back when its step ends, as
with the local worker's child. Tasks read and write the driver's cache folder ($CLINBENCH_CACHE) and read the letters
file from its submitted path: on a cluster of several machines both must be on a filesystem every node mounts at the
same path. Ray's usage statistics are switched off (RAY_USAGE_STATS_ENABLED=0) in the driver and in every task.

Network and secrets: anyone who can reach a Ray cluster's ports can run code on it, and so read the letters and the cache
its tasks read (Ray expects a trusted, isolated network). The local instance therefore listens on 127.0.0.1 only
(`LOCAL_ONLY`: its node address is loopback, so the GCS, the raylet and every worker bind there; no dashboard) and is
always a new one, never a cluster that `ray start` left running on this machine. A task's environment holds only what a
step needs (`task_env`: the cache folder, TASK_ENV); no other CLINBENCH_ variable, so never the serve token, reaches the
cluster or the local instance's processes.
"""

from __future__ import annotations

import json
import os
import socket
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass

from engine.cache.storage import sweep_orphans
from engine.options.config import CACHE_ENV, REPO_ROOT, cache_dir
from engine.runs import experiment, launch, stepcall
from engine.runs.ray_task import Relay, resources, run_task, shards
from engine.runs.states import Status
from engine.runs.store import database
from engine.runs.store.runstore import RunStore, open_store

TELEMETRY_OFF = {"RAY_USAGE_STATS_ENABLED": "0"}
LOOPBACK = "127.0.0.1"
# Ray's own switch for an instance that serves one machine (its default on macOS and Windows): the node address is then
# LOOPBACK, so the GCS, the raylet and every worker listen on loopback only. Read when `ray` is imported: `serve` imports it
# after connect_cluster has set this.
LOCAL_ONLY = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}
# The driver's variables a step's task gets, besides the cache folder: the device and dtype it runs with, the size limit its
# letters were checked against, the tokenizers' threads and the test knobs that slow extraction and shrink its chunks.
# Nothing else: never a token.
TASK_ENV = (
    "CLINBENCH_DEVICE",
    "CLINBENCH_DTYPE",
    "CLINBENCH_MAX_DATA_MB",
    "CLINBENCH_BATCH_DELAY_S",
    "CLINBENCH_CHUNK_ROWS",
    "TOKENIZERS_PARALLELISM",
)
LOCAL_OBJECT_STORE_BYTES = 256 * 2**20  # steps pass only small dicts through Ray; the default would reserve 30% of RAM
TASK_RETRIES = 1  # a step whose Ray worker process died runs once more
CANCEL_GRACE_S = 2.5
POLL_S = 0.2
WAITING = "waiting for Ray resources"
_LOCAL_INSTANCE = [False]  # this driver started the Ray instance it uses (every task runs on this machine)


def _say(msg: str) -> None:
    print(f"[{time.strftime('%Y-%m-%d %H:%M:%S')}] ray driver {os.getpid()}: {msg}", flush=True)


# --- the driver ------------------------------------------------------------------------


@dataclass
class _Task:
    run_id: int
    idx: int
    title: str
    n_steps: int
    started: bool = False
    stop_sent: bool = False
    forced: bool = False


def _address_of_queued(rs: RunStore) -> str | None:
    queued = rs.queued_steps("ray")
    return json.loads(queued[0][2])["options"].get("ray_address") if queued else None


def _reachable(address: str, timeout: float = 10.0) -> None:
    """Fail in seconds, not minutes, when nothing listens at host:port (ray.init retries an unreachable cluster for long)."""
    host, _, port = address.removeprefix("ray://").rpartition(":")
    if not port.isdigit():
        raise ValueError(f"{address!r} is not host:port (or ray://host:port)")
    try:
        socket.create_connection((host or "127.0.0.1", int(port)), timeout=timeout).close()
    except OSError as exc:
        raise ConnectionError(f"nothing answers at {host}:{port} ({exc.strerror or exc}).") from None


def task_env(environ: Mapping[str, str]) -> dict[str, str]:
    """The variables every task of this driver gets (Ray's runtime environment): telemetry off, the cache folder, this
    checkout on PYTHONPATH, and those of TASK_ENV that `environ` sets."""
    return {
        **TELEMETRY_OFF,
        CACHE_ENV: str(cache_dir()),
        "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO_ROOT), environ.get("PYTHONPATH")])),
        **{k: environ[k] for k in TASK_ENV if k in environ},
    }


def connect_cluster(address: str | None, num_cpus: int | None = None) -> dict:
    """ray.init: the cluster at `address` (or $RAY_ADDRESS), else a new local instance with `num_cpus` CPUs (default: this
    machine's), listening on loopback only. Returns its resources."""
    address = address or os.environ.get("RAY_ADDRESS") or None
    kwargs: dict = {"runtime_env": {"env_vars": task_env(os.environ)}, "log_to_driver": False, "include_dashboard": False}
    if address and address != "auto":
        _reachable(address)
    _LOCAL_INSTANCE[0] = address is None
    if address is None:
        # the instance's processes inherit this process's environment: it keeps only the CLINBENCH_ variables tasks get
        for name in [k for k in os.environ if k.startswith("CLINBENCH_") and k not in (CACHE_ENV, *TASK_ENV)]:
            del os.environ[name]
        os.environ.update(LOCAL_ONLY)
        kwargs.update(num_cpus=num_cpus or os.cpu_count() or 1, object_store_memory=LOCAL_OBJECT_STORE_BYTES, _node_ip_address=LOOPBACK)
    import ray

    ray.init(address=address or "local", **kwargs)  # "local": a new instance, not one `ray start` left on this machine
    if address is None and ray.util.get_node_ip_address() != LOOPBACK:
        node = ray.util.get_node_ip_address()
        ray.shutdown()
        raise RuntimeError(
            f"the local Ray instance would listen on {node}, not only on {LOOPBACK} (ray was imported before the driver could "
            "keep it on this machine), so ClinBench stopped it."
        )
    return ray.cluster_resources()


def serve(idle_exit: float = 0.0, address: str | None = None) -> int:
    """Send the queued steps of Ray runs to the cluster until stopped (SIGTERM/Ctrl-C), or idle for `idle_exit` s (0 = never)."""
    import psutil

    os.environ.update(TELEMETRY_OFF)
    launch.check_ray()  # (ray itself is imported by connect_cluster, once it knows whether the instance is local)
    me = psutil.Process()
    database.exit_on_change(_say)
    with open_store() as rs:
        rs.recover()
        others = rs.register_worker("ray", 1)
        if others:
            _say(f"a Ray driver already serves this store (pid {others[0]}). Leaving.")
            return 0
        address = address or _address_of_queued(rs)
    stepcall.Stop.install()
    try:
        try:
            cluster = connect_cluster(address)
        except Exception as exc:  # unreachable, refused, wrong token, version mismatch: the queued steps say why
            _fail_queued(
                address,
                f"Could not connect to the Ray cluster at {address or os.environ.get('RAY_ADDRESS') or 'a new local instance'}: "
                f"{type(exc).__name__}: {(str(exc).strip().splitlines() or [''])[0][:300]} Check ray_address / $RAY_ADDRESS and "
                "that `ray status` works on this machine (a cluster with token authentication needs its token in "
                "~/.ray/auth_token or $RAY_AUTH_TOKEN); then resume the run.",
            )
            return 1
        import ray

        where = address or os.environ.get("RAY_ADDRESS") or f"a new local Ray instance on {LOOPBACK}"
        _say(f"connected to {where}: {cluster.get('CPU', 0):g} CPU, {cluster.get('GPU', 0):g} GPU")
        relay = ray.remote(Relay).options(num_cpus=0).remote()
        with open_store() as rs:
            _loop(rs, me.pid, relay, address, cluster.get("GPU", 0.0), idle_exit)
    finally:
        with open_store() as rs:
            rs.deregister(me.pid)
        ray = sys.modules.get("ray")
        if ray is not None and ray.is_initialized():
            ray.shutdown()  # a local instance this driver started stops with it
    return 0


def _serves(run_address: str | None, address: str | None) -> bool:
    """Whether the driver for `address` serves a run that asked for `run_address` (none: whichever driver runs)."""
    return not run_address or run_address == address


def _fail_queued(address: str | None, message: str) -> None:
    """Every queued step of the Ray runs this driver would serve becomes failed with `message` (nothing waits forever)."""
    _say(message)
    with open_store() as rs, rs.transaction(durable=True):
        for run_id, idx, spec in rs.queued_steps("ray"):
            if _serves(json.loads(spec)["options"].get("ray_address"), address):
                rs.move(run_id, idx, Status.FAILED, expect=Status.QUEUED, error=message)
                database.append_log(run_id, f"step {idx + 1} failed: {message}")


def _loop(rs: RunStore, pid: int, relay, address: str | None, gpus: float, idle_exit: float) -> None:
    import ray

    task_fn = ray.remote(max_calls=1)(run_task)
    tasks: dict = {}  # ObjectRef -> _Task
    specs: dict[int, tuple] = {}  # run id -> (spec, steps, dependencies)
    idle_since = time.monotonic()
    while not stepcall.Stop.requested:
        rs.check()
        rs.heartbeat(pid)
        for run_id, idx in _claim_ready(rs, pid, address, specs):
            spec, steps, _deps = specs[run_id]
            spec_json, data_hash = rs.run_input(run_id)
            res = resources(steps[idx], spec.options, gpus)
            ref = task_fn.options(**res, max_retries=TASK_RETRIES).remote(
                spec_json, data_hash, run_id, idx, relay, int(max(1, res["num_cpus"])), shards(spec.options, res)
            )
            tasks[ref] = _Task(run_id, idx, steps[idx]["title"], len(steps))
            database.append_log(
                run_id, f"step {idx + 1}/{len(steps)} sent to Ray ({res['num_cpus']:g} CPU, {res['num_gpus']:g} GPU): {steps[idx]['title']}"
            )
        _move_events(rs, ray.get(relay.drain.remote()), tasks)
        _pass_cancels(rs, relay, tasks)
        if tasks:
            finished, _ = ray.wait(list(tasks), num_returns=len(tasks), timeout=POLL_S)
            _move_events(rs, ray.get(relay.drain.remote()), tasks)  # the last curves before the outcome
            for ref in finished:
                _finish(rs, pid, ref, tasks.pop(ref))
            idle_since = time.monotonic()
        elif idle_exit and time.monotonic() - idle_since > idle_exit and not rs.queued("ray"):
            _say("nothing queued; leaving")
            return
        else:
            time.sleep(POLL_S * 2)
    _say(f"stopped by {stepcall.Stop.signal_name}")
    for ref, t in tasks.items():
        ray.cancel(ref, force=True)
        _record(
            rs,
            pid,
            t,
            {
                "status": Status.INTERRUPTED,
                "error": f"The Ray driver was stopped ({stepcall.Stop.signal_name}) during this step. Resume the run to do it again.",
            },
        )


def _claim_ready(rs: RunStore, pid: int, address: str | None, specs: dict) -> list[tuple[int, int]]:
    """Mark running (waiting for Ray resources) every queued step of a Ray run for this cluster whose inputs are final."""
    ready, states = [], {}  # states: run id -> {idx: status}, read once per run
    for run_id, idx, spec_json in rs.queued_steps("ray"):
        if run_id not in specs:
            spec = experiment.parse_stored_spec(json.loads(spec_json), where=f"run {run_id}")
            steps = spec.steps()
            specs[run_id] = (spec, steps, experiment.dependencies(steps))
        spec, _steps, deps = specs[run_id]
        if not _serves(spec.options.execution.ray_address, address):
            continue  # another cluster's run: the next driver takes it
        if run_id not in states:
            states[run_id] = rs.step_states(run_id)
        if all(states[run_id][j].final for j in deps[idx]):
            ready.append((run_id, idx))
    with rs.transaction():  # a step cancelled meanwhile is no longer queued: move leaves it and says so (None)
        return [step for step in ready if rs.move(*step, Status.RUNNING, expect=Status.QUEUED, worker=pid, stage=WAITING) is not None]


def _move_events(rs: RunStore, events: list[tuple], tasks: dict) -> None:
    """The relay's events into the store, in one transaction (progress: only each step's latest)."""
    if not events:
        return
    by_key = {(t.run_id, t.idx): t for t in tasks.values()}
    latest = {}
    with rs.transaction():
        for kind, key, *rest in events:
            run_id, idx = key
            if kind == "started":
                node, task_pid, t = rest
                t_ = by_key.get((run_id, idx))
                if t_ is not None and t_.started:  # Ray runs it again: its worker process died
                    rs.count_retry(run_id, idx)
                    database.append_log(run_id, f"step {idx + 1}: its Ray worker died; Ray runs it again on {node}")
                if t_ is not None:
                    t_.started = True
                rs.set_started_on(run_id, idx, node, task_pid, t)
            elif kind == "progress":
                latest[key] = rest
            elif kind == "metric":
                rs.write_metric(run_id, idx, *rest)
        for (run_id, idx), p in latest.items():
            rs.write_progress(run_id, idx, *p)


def _pass_cancels(rs: RunStore, relay, tasks: dict) -> None:
    """Runs the user cancelled: stop flag to their steps; a task not started is cancelled now, a running one after the grace."""
    import ray

    if not tasks:
        return
    wanted = rs.cancel_requests()
    for ref, t in tasks.items():
        requested = wanted.get(t.run_id)
        if requested is None or t.forced:
            continue
        if not t.stop_sent:
            relay.stop.remote(t.run_id)
            t.stop_sent = True
        if not t.started or time.time() - requested > CANCEL_GRACE_S:
            ray.cancel(ref, force=t.started)
            t.forced = True


def _finish(rs: RunStore, pid: int, ref, t: _Task) -> None:
    import ray
    from ray import exceptions as rx

    try:
        outcome = ray.get(ref)
    except rx.TaskCancelledError:
        outcome = {
            "status": Status.CANCELLED,
            "error": "Cancelled before it started."
            if not t.started
            else (
                f"Cancelled; the step did not stop by itself within {CANCEL_GRACE_S:g} s, so its Ray task was cancelled. Nothing half-written was kept."
            ),
        }
    except (rx.WorkerCrashedError, rx.NodeDiedError, rx.LocalRayletDiedError) as exc:
        outcome = {
            "status": Status.FAILED,
            "error": (
                f"The Ray worker running this step died ({type(exc).__name__}), and again after {TASK_RETRIES} retry: most often the node ran out of "
                "memory. Try a smaller max_length or batch_tokens, a smaller model, or nodes with more memory; then resume the run."
            ),
        }
    except rx.RayError as exc:
        first = (str(exc).strip().splitlines() or [""])[0][:300]
        outcome = {"status": Status.FAILED, "error": f"Ray could not run this step: {type(exc).__name__}: {first}"}
    if t.forced and outcome["status"] != Status.DONE:
        outcome = {"status": Status.CANCELLED, "error": outcome.get("error") if outcome["status"] == Status.CANCELLED else "Cancelled."}
    if outcome.get("log"):
        with open(database.log_path(t.run_id), "a", encoding="utf-8") as fh:
            fh.write(outcome["log"] if outcome["log"].endswith("\n") else outcome["log"] + "\n")
    if outcome["status"] != Status.DONE and _LOCAL_INSTANCE[0]:
        sweep_orphans()  # what a cancelled or dead task was writing (by pid: only where every task ran on this machine)
    _record(rs, pid, t, outcome)


def _record(rs: RunStore, pid: int, t: _Task, outcome: dict) -> None:
    clean = {k: v for k, v in outcome.items() if k in ("status", "error", "result")}
    stepcall.record(rs, t.run_id, t.idx, clean, pid)
    database.append_log(
        t.run_id,
        f"step {t.idx + 1}/{t.n_steps} {outcome['status']}{stepcall.end_line(outcome['status'], outcome.get('error'), outcome.get('result') or {})}",
    )
