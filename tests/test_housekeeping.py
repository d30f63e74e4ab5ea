"""A full disk leaves nothing half-written and says so; `cache usage` adds up; `cache prune` removes orphans and old
results but never what a run in the store shows."""

from __future__ import annotations

import errno
import json
import time
from pathlib import Path

import numpy as np
import psutil
import pytest

from engine.cache import artifacts, storage
from engine.errors import ClinBenchError, DiskFull
from engine.runs import housekeeping, jobs
from tests.conftest import cli, run_step, stop_workers


def _tmp_leftovers(folder: Path) -> list[str]:
    return [p.name for p in folder.rglob("*") if ".tmp" in p.name]


def _no_space(*_a, **_k):
    raise OSError(errno.ENOSPC, "No space left on device")


class SafetensorError(Exception):  # what safetensors raises, as its message reads on a full disk
    pass


def test_disk_full_in_atomic_write_bytes_keeps_the_old_file(tmp_path, monkeypatch):
    dest = tmp_path / "a.json"
    dest.write_text("old")
    monkeypatch.setattr(storage.os, "fsync", _no_space)
    with pytest.raises(DiskFull) as err:
        storage.atomic_write_bytes(dest, b"x" * 3_000_000)
    msg = str(err.value)
    assert msg.startswith("disk full: 3.0 MB needed, ") and " MB free at " in msg and str(tmp_path) in msg and "CLINBENCH_CACHE" in msg
    assert dest.read_text() == "old" and _tmp_leftovers(tmp_path) == []


def test_disk_full_in_atomic_path_and_atomic_dir(tmp_path):
    dest = tmp_path / "x.npy"
    with pytest.raises(DiskFull, match=r"disk full: at least 2\.0 MB needed"), storage.atomic_path(dest) as tmp:
        tmp.write_bytes(b"0" * 2_000_000)
        _no_space()
    assert not dest.exists() and _tmp_leftovers(tmp_path) == []

    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "weights.safetensors").write_text("the old weights")
    with pytest.raises(DiskFull, match=r"at least 1\.0 MB needed") as err, storage.atomic_dir(folder) as tmp:
        (tmp / "config.json").write_bytes(b"1" * 1_000_000)
        raise SafetensorError('Error while serializing: IoError(Os { code: 28, kind: StorageFull, message: "No space left on device" })')
    assert isinstance(err.value.__cause__, SafetensorError)
    assert [p.name for p in folder.iterdir()] == ["weights.safetensors"] and (
        folder / "weights.safetensors"
    ).read_text() == "the old weights"
    assert _tmp_leftovers(tmp_path) == []

    with pytest.raises(ValueError), storage.atomic_path(dest):  # other errors pass through unchanged
        raise ValueError("not a disk problem")


def test_disk_full_during_an_evaluation_leaves_no_artifact(cache, small_csv, monkeypatch):
    import skops.io

    from engine.runs import experiment

    ds = experiment.DataSpec(str(small_csv), "letter", "specialty").load()
    monkeypatch.setattr(skops.io, "dumps", _no_space)  # the classifier's file is being written
    with pytest.raises(DiskFull, match=r"disk full: at least .* MB needed") as err:
        run_step(ds, "tfidf", "tfidf", n_boot=100)
    assert "evaluations" in str(err.value)
    assert list((cache / "evaluations").iterdir()) == []


def _dead_pid() -> int:
    pid = 4_000_000
    while psutil.pid_exists(pid):
        pid += 1
    return pid


def _files(root: Path) -> dict[str, int]:
    return {str(p.relative_to(root)): p.lstat().st_size for p in root.rglob("*") if p.is_file()}


def _fake_pair(folder: Path, key: str, meta: dict) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    np.save(folder / f"{key}.npy", np.zeros((10, 4), dtype=np.float32))
    (folder / f"{key}.json").write_text(json.dumps(meta))


@pytest.fixture
def filled(cache, small_csv, tiny_encoder, tmp_path):
    """A run (logreg on the tiny encoder + the tf-idf reference) done by a worker, an `evaluate`-style result outside any
    run, and orphans: a dead writer's temporary, a quarantined folder, a checkpoint, a deleted run's log, unused embeddings."""
    from engine.runs import experiment

    spec = experiment.parse_spec(
        {
            "name": "kept",
            "data": {"path": str(small_csv), "text_column": "letter", "label_column": "specialty"},
            "models": [str(tiny_encoder)],
            "methods": ["logreg"],
            "options": {"max_length": 64, "grid": False, "n_boot": 100},
        }
    )
    run_id = jobs.submit(spec)
    deadline = time.monotonic() + 180
    while not (run := jobs.get_run(run_id)).status.final:
        assert time.monotonic() < deadline, jobs.read_log(run_id)
        time.sleep(0.2)
    stop_workers(cache)
    assert str(run.status) == "done", jobs.read_log(run_id)
    emb_key = next(iter((cache / "embeddings").glob("*.npy"))).stem
    ds = experiment.DataSpec(str(small_csv), "letter", "specialty").load()
    outside = run_step(ds, "tfidf", "tfidf", n_boot=100, seed=1)  # as `evaluate` stores it: in no run
    _fake_pair(cache / "projections", "map-of-run", {"embeddings_key": emb_key})
    _fake_pair(cache / "embeddings", "unused", {"key": "unused", "model": {"name": "some-model"}})
    _fake_pair(cache / "projections", "map-of-unused", {"embeddings_key": "unused"})
    (cache / "evaluations" / f".abc.{_dead_pid()}.x1y2.tmp").mkdir()
    (cache / "evaluations" / ".corrupt-deadbeef-20250101T000000").mkdir()
    (cache / "evaluations" / ".corrupt-deadbeef-20250101T000000" / "manifest.json").write_text("{}")
    (cache / "checkpoints").mkdir(exist_ok=True)
    (cache / "checkpoints" / "k.pt").write_bytes(b"c" * 1000)
    (cache / "runs" / "run-999.log").write_text("a deleted run\n")
    return cache, run_id, Path(outside.artifact).name, emb_key


def _run_artifacts_verify(run_id: int) -> None:
    run = jobs.get_run(run_id)
    for s in run.steps:
        artifacts.verify_tree(Path(s.result["artifact"]), "")


def test_usage_adds_up_and_prune_keeps_what_a_run_shows(filled):
    cache, run_id, outside, emb_key = filled
    run = jobs.get_run(run_id)
    u = housekeeping.usage()
    files = _files(cache)
    assert u["total_bytes"] == sum(files.values())
    for by in ("folder", "dataset", "model"):
        assert sum(r["bytes"] for r in u["by"][by]) == u["total_bytes"], by
    folders = {r["group"]: r["bytes"] for r in u["by"]["folder"]}
    assert folders["evaluations"] == sum(n for f, n in files.items() if f.startswith("evaluations/"))
    assert folders["embeddings"] == sum(n for f, n in files.items() if f.startswith("embeddings/"))
    (mine,) = u["by"]["run"]
    run_files = [f for f, _ in files.items() if any(f.startswith(f"evaluations/{Path(a).name}/") for a in run.artifacts)]
    run_files += [f"embeddings/{emb_key}.npy", f"embeddings/{emb_key}.json", "projections/map-of-run.npy"]
    run_files += ["projections/map-of-run.json", f"runs/run-{run_id}.log"]
    assert mine["run_id"] == run_id and mine["bytes"] == sum(files[f] for f in run_files)
    models = {r["group"] for r in u["by"]["model"]}
    assert "tfidf" in models and "some-model" in models
    assert any("letters.csv" in r["group"] for r in u["by"]["dataset"])
    assert u["unreferenced_bytes"] >= files[f"evaluations/{outside}/classifier.skops"]

    with pytest.raises(ClinBenchError, match="needs a selector"):
        housekeeping.prune()
    dry = housekeeping.prune(orphans=True, dry_run=True)
    assert _files(cache) == files and dry["freed_bytes"] > 0
    done = housekeeping.prune(orphans=True)
    gone = {Path(r["path"]).name for r in done["removed"]}
    assert gone == {p.name for p in map(Path, (r["path"] for r in dry["removed"]))}
    assert {"unused.npy", "unused.json", "map-of-unused.npy", "map-of-unused.json", "k.pt", "run-999.log"} <= gone
    assert any(n.startswith(".corrupt-") for n in gone) and any(n.endswith(".tmp") for n in gone)
    left = _files(cache)
    store = ("runs/runs.sqlite", "runs/store.lock")
    assert done["freed_bytes"] == sum(n for f, n in files.items() if not f.startswith(store)) - sum(
        n for f, n in left.items() if not f.startswith(store)
    )
    assert all(f in left for f in run_files) and f"evaluations/{outside}/manifest.json" in left  # `evaluate`'s result is kept
    _run_artifacts_verify(run_id)

    old = housekeeping.prune(older_than_days=0)  # everything unused "for 0 days" that no run refers to
    assert {r["name"] for r in old["removed"]} == {outside}
    assert all(f in _files(cache) for f in run_files)
    _run_artifacts_verify(run_id)
    out = cli("runs", "show", str(run_id), "--json")
    assert out.returncode == 0 and json.loads(out.stdout)["status"] == "done"

    with pytest.raises(ClinBenchError, match="no run 12345"):
        housekeeping.prune(runs=[12345])
    gone_run = housekeeping.prune(runs=[run_id])
    assert gone_run["runs_deleted"] == [run_id]
    assert not any(f.startswith(("evaluations/", "embeddings/", "projections/")) for f in _files(cache))
    assert not (cache / "runs" / f"run-{run_id}.log").exists() and (cache / "runs" / "runs.sqlite").exists()
    with pytest.raises(ClinBenchError):
        jobs.get_run(run_id)


def test_cache_commands(cache, small_csv):
    from engine.runs import experiment

    ds = experiment.DataSpec(str(small_csv), "letter", "specialty").load()
    folder = Path(run_step(ds, "tfidf", "tfidf", n_boot=100).artifact)
    env = {"CLINBENCH_CACHE": str(cache)}
    out = cli("cache", "usage", "--json", env_extra=env)
    assert out.returncode == 0, out.stderr
    u = json.loads(out.stdout)
    assert u["total_bytes"] == sum(_files(cache).values()) and set(u["by"]) == {"folder", "dataset", "model", "run"}
    out = cli("cache", "usage", "--by", "model", env_extra=env)
    assert out.returncode == 0 and "tfidf" in out.stdout and "total " in out.stdout
    out = cli("cache", "prune", env_extra=env)
    assert out.returncode == 2 and out.stderr.startswith("error: cache prune needs a selector")
    out = cli("cache", "prune", "--older-than", "0", "--dry-run", env_extra=env)
    assert out.returncode == 0 and "would remove" in out.stdout and str(folder) in out.stdout and folder.exists()
    out = cli("cache", "prune", "--older-than", "0", "--json", env_extra=env)
    assert out.returncode == 0 and json.loads(out.stdout)["freed_bytes"] > 0 and not folder.exists()


def test_disk_full_while_saving_a_folds_weights_leaves_no_folder(tmp_path, monkeypatch):
    """Fine-tuning saves each fold's trained weights: a full disk there is DiskFull and leaves no half-written folder."""
    import safetensors.torch
    import torch

    from engine.methods.lora import save_trained

    class Adapter:  # what a peft model's save_pretrained does: write the adapter's tensors with safetensors
        def save_pretrained(self, folder):
            folder.mkdir(parents=True)
            safetensors.torch.save_file({"lora_A": torch.zeros(2, 2)}, str(folder / "adapter_model.safetensors"))

    def no_space(*_a, **_k):
        raise safetensors.SafetensorError('Error while serializing: IoError(Os { code: 28, message: "No space left on device" })')

    monkeypatch.setattr(safetensors.torch, "save_file", no_space)
    out = tmp_path / "staging" / "r0f0"
    with pytest.raises(DiskFull, match="disk full"):
        save_trained(Adapter(), out)
    assert not out.exists() and list((tmp_path / "staging").iterdir()) == []
    monkeypatch.undo()
    save_trained(Adapter(), out)
    assert (out / "adapter" / "adapter_model.safetensors").is_file()
