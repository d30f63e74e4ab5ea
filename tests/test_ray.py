"""The Ray executor (engine.rayexec) on a local Ray cluster that this module starts: two CPUs, so two steps at once.

Steps run as Ray tasks; the run store stays with the driver. Checked: a grid of independent steps overlaps in time and
finishes, a dependent step waits for its input and reuses it, results equal the local worker's bit for bit, a cancel stops
running and queued tasks, a killed Ray worker's step is run again, a spec can ask for Ray without the CLI flag, the
local instance the driver starts listens on loopback only, and tasks get only the variables a step needs (no token).
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import psutil
import pytest

from engine.errors import ClinBenchError
from engine.runs import experiment, jobs
from tests.conftest import cache_at, cli, stop_workers
from tests.test_jobs import finished, leftovers, show, submit, wait_for, write_spec

pytest.importorskip("ray")
RAY = str(Path(sys.executable).with_name("ray"))


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """`ray start --head` with 2 CPUs (two worker processes at once) in a folder of its own; RAY_ADDRESS points at it."""
    tmp = tmp_path_factory.mktemp("ray")
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "RAY_AUTH_MODE": "disabled"}  # a test cluster on loopback
    port = "6391"
    subprocess.run(
        [RAY, "start", "--head", f"--port={port}", "--num-cpus=2", "--num-gpus=0", "--include-dashboard=false",
         f"--object-store-memory={200 * 2**20}", f"--temp-dir={tmp}", "--disable-usage-stats"],
        check=True, env=env, capture_output=True, timeout=120,
    )  # fmt: skip
    old = os.environ.get("RAY_ADDRESS")
    os.environ["RAY_ADDRESS"] = f"127.0.0.1:{port}"
    yield os.environ["RAY_ADDRESS"]
    if old is None:
        os.environ.pop("RAY_ADDRESS", None)
    else:
        os.environ["RAY_ADDRESS"] = old
    subprocess.run([RAY, "stop", "--force"], env=env, capture_output=True, timeout=120)


@pytest.fixture
def store(tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    cache.mkdir()
    monkeypatch.setenv("CLINBENCH_CACHE", str(cache))
    monkeypatch.delenv("CLINBENCH_BATCH_DELAY_S", raising=False)
    yield cache
    stop_workers(cache)


def overlapping(steps: list[dict]) -> int:
    """The most steps running at one moment (from their start and end times)."""
    edges = sorted([(s["started"], 1) for s in steps] + [(s["finished"], -1) for s in steps])
    most = now = 0
    for _t, d in edges:
        now += d
        most = max(most, now)
    return most


def predictions(step: dict) -> bytes:
    return (Path(step["result"]["artifact"]) / "predictions.json").read_bytes()


def test_grid_runs_in_parallel_waits_for_inputs_and_equals_the_local_worker(cluster, store, tiny_encoder, small_csv, tmp_path):
    spec = write_spec(tmp_path / "grid.json", small_csv, [str(tiny_encoder)], ["svc", "logreg"], reference=True, n_seeds=2)
    out = cli("submit", str(spec), "--executor", "ray")  # the spec says nothing of Ray: the flag does
    assert out.returncode == 0, out.stderr
    ray_id = int(out.stdout.strip().splitlines()[-1])
    run = wait_for(finished, run_id=ray_id, timeout=300)
    assert show(ray_id)["executor"] == "ray"
    assert run["status"] == "done", jobs.read_log(ray_id)[-3000:]
    steps = run["steps"]
    assert len(steps) == 6 and all(s["node"] for s in steps) and all(s["attempts"] == 1 for s in steps)
    assert overlapping(steps) >= 2, [(s["title"], s["started"], s["finished"]) for s in steps]
    by = {(s["method"], s["title"].rsplit("seed ", 1)[-1]): s for s in steps}
    for seed in ("0", "1"):  # logreg reuses svc's embeddings: it starts after that step and runs no forward pass
        assert by[("logreg", seed)]["started"] >= by[("svc", seed)]["finished"]
        assert by[("logreg", seed)]["result"]["forward_passes"] == 0
    # the local worker, in a cache of its own, computes the same results bit for bit
    fresh = tmp_path / "local-cache"
    fresh.mkdir()
    with cache_at(fresh):
        local_id = submit(spec)
        try:
            local = wait_for(finished, run_id=local_id, timeout=300)
        finally:
            stop_workers(fresh)
        assert show(local_id)["executor"] == "local"
    assert [s["status"] for s in local["steps"]] == ["done"] * 6
    for a, b in zip(local["steps"], steps, strict=True):
        assert Path(a["result"]["artifact"]).name == Path(b["result"]["artifact"]).name  # the same cache key
        assert Path(a["result"]["artifact"]) != Path(b["result"]["artifact"])  # computed twice, in two caches
        assert predictions(a) == predictions(b), a["title"]
        assert a["result"]["macro_f1"] == b["result"]["macro_f1"]


def test_cancel_stops_running_and_queued_ray_steps(cluster, store, tiny_encoder, small_csv, tmp_path):
    spec = write_spec(tmp_path / "slow.json", small_csv, [str(tiny_encoder)], ["svc"], n_seeds=4, executor="ray")
    run_id = submit(spec, env_extra={"CLINBENCH_BATCH_DELAY_S": "1.0"})  # each batch of the extraction takes a second
    wait_for(lambda r: sum(s["status"] == "running" and s["progress"]["total"] > 0 for s in r["steps"]) >= 1, run_id=run_id, timeout=180)
    jobs.cancel(run_id)
    run = wait_for(finished, run_id=run_id, timeout=30)
    assert run["status"] == "cancelled"
    assert all(s["status"] == "cancelled" for s in run["steps"]), [(s["status"], s["error"]) for s in run["steps"]]
    assert not leftovers(store)


def test_a_killed_ray_worker_s_step_runs_again(cluster, store, tiny_encoder, small_csv, tmp_path):
    spec = write_spec(tmp_path / "kill.json", small_csv, [str(tiny_encoder)], ["svc"], executor="ray")
    run_id = submit(spec, env_extra={"CLINBENCH_BATCH_DELAY_S": "0.5"})
    step = wait_for(lambda r: r["steps"][0]["progress"]["total"] > 0 and r["steps"][0], run_id=run_id, timeout=180)
    first_pid = step["step_pid"]
    os.kill(first_pid, signal.SIGKILL)  # the Ray worker process running the step
    run = wait_for(finished, run_id=run_id, timeout=240)
    assert run["status"] == "done" and run["steps"][0]["attempts"] == 2, jobs.read_log(run_id)[-3000:]
    assert "its Ray worker died; Ray runs it again" in jobs.read_log(run_id)


def test_the_local_worker_leaves_ray_runs_to_the_ray_driver(store, small_csv, tiny_encoder, tmp_path):
    from engine.runs import worker
    from engine.runs.store.runstore import open_store

    spec = experiment.load_spec(write_spec(tmp_path / "r.json", small_csv, [str(tiny_encoder)], ["svc"], executor="ray"))
    run_id = jobs.submit(spec, start_worker=False)
    with open_store() as rs:
        assert worker._claim(rs, 1) is None and rs.queued("ray") == 1 and rs.queued("local") == 0
    assert jobs.get_run(run_id).executor == "ray"


def test_without_ray_installed_a_ray_run_is_refused_with_the_fix(store, small_csv, tiny_encoder, tmp_path, monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "ray" else real(name, *a))
    spec = experiment.load_spec(write_spec(tmp_path / "r.json", small_csv, [str(tiny_encoder)], ["svc"], executor="ray"))
    with pytest.raises(ClinBenchError, match=r"scripts/setup.sh --ray"):
        jobs.submit(spec, start_worker=False)
    assert jobs.list_runs() == []  # nothing queued


def test_steps_wait_only_for_the_steps_whose_artifacts_they_reuse():
    spec = experiment.parse_spec(
        {"models": ["minilm", "smollm2"], "methods": ["svc", "logreg", "lora", "lora-svc"], "options": {"n_seeds": 2}}
    )
    steps = spec.steps()
    deps = experiment.dependencies(steps)
    for i, s in enumerate(steps):
        want = {"logreg": "svc", "lora-svc": "lora"}.get(s["method"])
        got = [(steps[j]["model"], steps[j]["method"], steps[j].get("seed")) for j in deps[i]]
        assert got == ([(s["model"], want, s.get("seed"))] if want else []), s["title"]


def test_ray_is_in_the_test_setup_but_optional_for_users():
    root = Path(__file__).resolve().parents[1]
    assert not any(line.strip().lower().startswith("ray") for line in (root / "requirements.txt").read_text().splitlines())
    assert shutil.which("ray", path=str(Path(sys.executable).parent))  # installed by scripts/setup.sh --dev


def test_an_unreachable_cluster_fails_the_queued_steps_in_seconds(store, tiny_encoder, small_csv, tmp_path):
    spec = write_spec(tmp_path / "far.json", small_csv, [str(tiny_encoder)], ["svc"], executor="ray", ray_address="127.0.0.1:1")
    run = wait_for(finished, run_id=submit(spec), timeout=60)
    assert run["status"] == "failed"
    assert (
        "Could not connect to the Ray cluster at 127.0.0.1:1" in run["steps"][0]["error"] and "resume the run" in run["steps"][0]["error"]
    )


def listening(pids: set[int]) -> list[tuple[str, str]]:
    """(local address, process) of every TCP socket that one of `pids` listens on, as `ss -ltnp` shows them."""
    out = subprocess.run(["ss", "-ltnpH"], capture_output=True, text=True, check=True, timeout=30).stdout
    found = []
    for line in out.splitlines():
        fields = line.split()
        if {int(p) for p in re.findall(r"pid=(\d+)", fields[-1])} & pids:
            found.append((fields[3].rsplit(":", 1)[0].strip("[]"), fields[-1]))
    return found


def is_loopback(address: str) -> bool:
    return address.removeprefix("::ffff:").startswith("127.") or address == "::1"


def running_step(run_id: int) -> dict:
    return wait_for(lambda r: r["steps"][0]["progress"]["total"] > 0 and r["steps"][0], run_id=run_id, timeout=180)


SECRET = {"CLINBENCH_SERVE_TOKEN": "not-for-the-cluster"}


@pytest.mark.skipif(not shutil.which("ss"), reason="needs ss (iproute2) to list listening sockets")
def test_the_local_instance_listens_on_loopback_only_and_its_tasks_get_no_token(store, tiny_encoder, small_csv, tmp_path, monkeypatch):
    monkeypatch.delenv("RAY_ADDRESS", raising=False)  # no cluster named: the driver starts a local instance
    spec = write_spec(tmp_path / "local.json", small_csv, [str(tiny_encoder)], ["svc"], executor="ray", batch_tokens=64)
    run_id = submit(spec, env_extra={"CLINBENCH_BATCH_DELAY_S": "0.5", **SECRET})
    step = running_step(run_id)
    task_env = psutil.Process(step["step_pid"]).environ()
    assert "CLINBENCH_SERVE_TOKEN" not in task_env and task_env["CLINBENCH_BATCH_DELAY_S"] == "0.5"
    (driver,) = [w for w in jobs.workers() if w["kind"] == "ray"]
    root = psutil.Process(driver["pid"])
    found = listening({root.pid} | {p.pid for p in root.children(recursive=True)})
    assert any("gcs_server" in who for _, who in found) and any("raylet" in who for _, who in found), found
    assert all(is_loopback(address) for address, _ in found), [f for f in found if not is_loopback(f[0])]
    jobs.cancel(run_id)
    assert wait_for(finished, run_id=run_id, timeout=60)["status"] == "cancelled"


def test_a_cluster_s_tasks_get_only_the_variables_a_step_needs(cluster, store, tiny_encoder, small_csv, tmp_path):
    spec = write_spec(tmp_path / "env.json", small_csv, [str(tiny_encoder)], ["svc"], executor="ray", batch_tokens=64)
    run_id = submit(spec, env_extra={"CLINBENCH_BATCH_DELAY_S": "0.5", "CLINBENCH_DEVICE": "cpu", **SECRET})
    task_env = psutil.Process(running_step(run_id)["step_pid"]).environ()  # a worker the cluster started, not the driver
    assert "CLINBENCH_SERVE_TOKEN" not in task_env
    assert task_env["CLINBENCH_CACHE"] == str(store) and task_env["CLINBENCH_DEVICE"] == "cpu"
    jobs.cancel(run_id)
    assert wait_for(finished, run_id=run_id, timeout=60)["status"] == "cancelled"


def test_an_extraction_sharded_over_ray_tasks_merges_into_the_array_of_a_local_run(
    cluster, tiny_encoder, default_ds, tmp_path, monkeypatch
):
    """extract_shards: the chunks of one extraction spread over Ray tasks (engine.runs.ray_shards), merged bit for bit."""
    import numpy as np
    import ray
    import torch

    from engine.cache.context import StepContext
    from engine.cache.storage import embeddings_dir
    from engine.features import extract
    from engine.models import catalog
    from engine.models.devices import Placement
    from engine.runs import ray_driver, ray_shards

    monkeypatch.setenv("CLINBENCH_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(extract, "CHUNK_ROWS", 8)
    threads = torch.get_num_threads()
    fp32, texts, opts = Placement("cpu", "float32"), default_ds.texts[:48], {"max_length": 24, "batch_tokens": 64}
    loaded = catalog.load(str(tiny_encoder), fp32)
    plan = extract.make_plan(loaded, texts, pooling="mean", windows=1, chunk_rows=8, **opts)
    assert len(plan.chunks) >= 6
    seen = []
    ctx = StepContext(progress=lambda *p: seen.append(p))
    ctx.shards = lambda model, placement: ray_shards.spreader(model, placement, 3, 1, 0, 1)  # the step + 2 Ray tasks, 1 CPU each
    ray_driver.connect_cluster(cluster)
    torch.set_num_threads(1)  # as a Ray step with step_cpus 1
    try:
        before = extract.FORWARD_PASSES
        vectors, stats = extract.embed(str(tiny_encoder), texts, **opts, placement=fp32, ctx=ctx)
        here = extract.FORWARD_PASSES - before
        local = extract.extract(loaded, texts, tmp_path / "local.npy", **opts)
    finally:
        ray.shutdown()
        torch.set_num_threads(threads)
    assert here == sum(len(c) for c in plan.chunks[::3]), "the step embedded its share only; the Ray shards the rest"
    assert any("chunks sealed" in stage for *_, stage in seen)
    assert np.array_equal(np.asarray(vectors), np.load(tmp_path / "local.npy")) and stats.n_tokens == local.n_tokens
    assert not list(embeddings_dir().glob("*.parts")), "the chunks are removed once the array is sealed"


def test_a_ray_step_with_extract_shards_embeds_one_share_and_caches_the_local_vectors(cluster, store, tiny_encoder, small_csv, tmp_path):
    """A run's step (run_task -> ctx.shards -> embed): with extract_shards 2 it embeds every other chunk, a Ray task the rest."""
    import json

    import numpy as np
    import torch

    from engine.data.dataset import load_dataset
    from engine.features import extract
    from engine.models import catalog
    from engine.models.devices import Placement

    spec = write_spec(tmp_path / "shards.json", small_csv, [str(tiny_encoder)], ["svc"], executor="ray", extract_shards=2, batch_tokens=256)
    run_id = submit(spec, env_extra={"CLINBENCH_CHUNK_ROWS": "8"})
    run = wait_for(finished, run_id=run_id, timeout=300)
    assert run["status"] == "done", jobs.read_log(run_id)[-3000:]
    (npy,) = (store / "embeddings").glob("*.npy")
    meta = json.loads(npy.with_suffix(".json").read_text())
    assert not list((store / "embeddings").glob("*.parts")), "the chunks are removed once the array is sealed"
    texts = load_dataset(small_csv, "letter", "specialty").texts
    loaded = catalog.load(str(tiny_encoder), Placement("cpu", meta["stats"]["dtype"]))
    plan = extract.make_plan(loaded, texts, pooling="mean", max_length=64, batch_tokens=256, windows=1, chunk_rows=8)
    assert len(plan.chunks) >= 4
    assert run["steps"][0]["result"]["forward_passes"] == sum(len(c) for c in plan.chunks[::2]), "the step embedded its share only"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the Ray step (step_cpus 1)
    try:
        extract.extract(loaded, texts, tmp_path / "local.npy", max_length=64, batch_tokens=256)
    finally:
        torch.set_num_threads(threads)
    assert np.array_equal(np.load(npy), np.load(tmp_path / "local.npy"))
