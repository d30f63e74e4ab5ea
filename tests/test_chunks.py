"""Resumable extraction: chunks sealed as they complete, a cancelled or killed extraction resumed from them with the same
vectors bit for bit, and the sweep of orphans keeping resumable chunks but removing damaged or stale ones."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

from engine.cache import storage
from engine.cache.chunks import parts_dir
from engine.cache.context import StepContext
from engine.errors import Cancelled
from engine.features import extract
from engine.models import catalog
from engine.models.devices import Placement
from tests.conftest import ROOT

CHUNK_ROWS = 8
OPTS = {"max_length": 24, "batch_tokens": 64}


@pytest.fixture(scope="module")
def encoders(tiny_encoder):
    return {dtype: catalog.load(str(tiny_encoder), Placement("cpu", dtype)) for dtype in ("float32", "bfloat16")}


def _uninterrupted(loaded, texts, path, **kw):
    extract.extract(loaded, texts, path, **OPTS, **kw)  # (resume off: no chunks folder, the plain one-pass run)
    assert not parts_dir(path).exists()
    return np.load(path)


def _chunks(path):
    return sorted(parts_dir(path).glob("chunk-*.npy"))


def _cancel_after(loaded, texts, out, sealed: int, match: str | None = None, **kw) -> None:
    """A resumable extraction into `out`, cancelled once `sealed` chunks are sealed."""
    with pytest.raises(Cancelled, match=match):
        extract.extract(loaded, texts, out, **OPTS, **kw, resume=True, ctx=StepContext(should_stop=lambda: len(_chunks(out)) >= sealed))


@pytest.mark.parametrize(("windows", "dtype"), [(1, "float32"), (3, "bfloat16")])
def test_a_cancelled_extraction_resumes_after_its_sealed_chunks_with_the_same_vectors(
    encoders, default_ds, tmp_path, monkeypatch, windows, dtype
):
    loaded, texts = encoders[dtype], default_ds.texts[:40]
    reference = _uninterrupted(loaded, texts, tmp_path / "ref.npy", windows=windows)
    monkeypatch.setattr(extract, "CHUNK_ROWS", CHUNK_ROWS)
    out = tmp_path / "v.npy"
    plan = extract.make_plan(loaded, texts, pooling="mean", windows=windows, chunk_rows=CHUNK_ROWS, **OPTS)
    assert len(plan.chunks) >= 4

    _cancel_after(loaded, texts, out, 2, match=r"2 of \d+ chunks are sealed", windows=windows)
    assert not out.exists() and len(_chunks(out)) == 2  # no vectors under the real name; the two sealed chunks kept

    before, seen = extract.FORWARD_PASSES, []
    extract.extract(loaded, texts, out, **OPTS, windows=windows, resume=True, ctx=StepContext(progress=lambda *p: seen.append(p)))
    done_before = sum(len(b) for chunk in plan.chunks[:2] for b in chunk)
    assert extract.FORWARD_PASSES - before == sum(len(c) for c in plan.chunks[2:]), "the sealed chunks were not computed again"
    assert (done_before, len(plan.ids), f"resumed after 2 of {len(plan.chunks)} chunks") in seen  # progress counts them
    assert np.array_equal(np.load(out), reference)
    assert not parts_dir(out).exists(), "the chunks are removed once the vectors are sealed"


def test_chunks_of_another_plan_are_not_reused(encoders, default_ds, tmp_path, monkeypatch):
    loaded, texts = encoders["float32"], default_ds.texts[:30]
    monkeypatch.setattr(extract, "CHUNK_ROWS", CHUNK_ROWS)
    out = tmp_path / "v.npy"
    _cancel_after(loaded, texts, out, 1)
    other = {**OPTS, "batch_tokens": 128}  # other batches: other padding, so the sealed chunk's numbers may differ
    before = extract.FORWARD_PASSES
    extract.extract(loaded, texts, out, **other, resume=True)
    assert extract.FORWARD_PASSES - before == len(
        extract.plan_batches([len(x) for x in extract.tokenize(loaded.tokenizer, texts, 24)[0]], 128)
    )
    extract.extract(loaded, texts, tmp_path / "ref.npy", **other)
    assert np.array_equal(np.load(out), np.load(tmp_path / "ref.npy"))


def test_embed_keeps_the_sealed_chunks_of_a_cancel_and_resumes_from_them(tiny_encoder, default_ds, cache, monkeypatch):
    monkeypatch.setattr(extract, "CHUNK_ROWS", CHUNK_ROWS)
    texts, fp32 = default_ds.texts[:40], Placement("cpu", "float32")
    seen = []

    def stop():
        return len(list(storage.embeddings_dir().glob("*.parts/chunk-*.npy"))) >= 2

    with pytest.raises(Cancelled):
        extract.embed(str(tiny_encoder), texts, **OPTS, placement=fp32, ctx=StepContext(should_stop=stop))
    assert [p.suffix for p in storage.embeddings_dir().iterdir()] == [".parts"]  # no vectors, no metadata, no temporary
    vectors, stats = extract.embed(str(tiny_encoder), texts, **OPTS, placement=fp32, ctx=StepContext(progress=lambda *p: seen.append(p)))
    assert seen[1][2].startswith("resumed after 2 of") and not stats.cache_hit
    assert sorted(p.suffix for p in storage.embeddings_dir().iterdir()) == [".json", ".npy"]
    fresh, _ = extract.embed(str(tiny_encoder), texts, **OPTS, placement=fp32, use_cache=False)
    assert np.array_equal(vectors, fresh)


KILLED = textwrap.dedent(
    """
    import sys
    from pathlib import Path
    from engine.features import extract
    from engine.models import catalog
    from engine.models.devices import Placement
    from engine.data.dataset import default_dataset

    extract.CHUNK_ROWS = {chunk_rows}
    loaded = catalog.load(sys.argv[1], Placement("cpu", "float32"))
    extract.extract(loaded, default_dataset().texts[:40], Path(sys.argv[2]), max_length=24, batch_tokens=64, resume=True)
    """
)


def test_a_killed_extraction_resumes_with_the_same_vectors_and_the_sweep_keeps_its_chunks(
    encoders, tiny_encoder, default_ds, tmp_path, monkeypatch
):
    out = tmp_path / "v.npy"
    env = {**os.environ, "CLINBENCH_BATCH_DELAY_S": "0.3", "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, "-c", KILLED.format(chunk_rows=CHUNK_ROWS), str(tiny_encoder), str(out)], env=env, cwd=ROOT)
    try:
        deadline = time.monotonic() + 120
        while len(_chunks(out)) < 2 and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert len(_chunks(out)) >= 2 and proc.poll() is None, "the extraction should be under way, two chunks sealed"
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    sealed = _chunks(out)
    assert not out.exists() and list(tmp_path.glob(".v.npy.*.tmp")), "killed while writing: a temporary, no vectors"
    removed = storage.sweep_orphans(tmp_path)
    assert not list(tmp_path.glob(".v.npy.*.tmp")) and not set(sealed) & set(removed) and _chunks(out) == sealed

    monkeypatch.setattr(extract, "CHUNK_ROWS", CHUNK_ROWS)
    loaded, texts = encoders["float32"], default_ds.texts[:40]
    plan = extract.make_plan(loaded, texts, pooling="mean", windows=1, chunk_rows=CHUNK_ROWS, **OPTS)
    before = extract.FORWARD_PASSES
    extract.extract(loaded, texts, out, **OPTS, resume=True)
    assert extract.FORWARD_PASSES - before == sum(len(c) for c in plan.chunks[len(sealed) :])
    assert np.array_equal(np.load(out), _uninterrupted(loaded, texts, tmp_path / "ref.npy"))


def test_the_sweep_removes_damaged_chunks_and_stale_chunk_folders(encoders, default_ds, tmp_path, monkeypatch):
    loaded, texts = encoders["float32"], default_ds.texts[:30]
    monkeypatch.setattr(extract, "CHUNK_ROWS", CHUNK_ROWS)
    out = tmp_path / "v.npy"
    _cancel_after(loaded, texts, out, 2)
    first, second = _chunks(out)
    kept = first.read_bytes()
    data = bytearray(second.read_bytes())
    data[-1] ^= 1  # one bit flipped on disk: the bytes no longer match the hash in the name
    second.write_bytes(bytes(data))
    assert storage.sweep_orphans(tmp_path) == [second] and _chunks(out) == [first]
    extract.extract(loaded, texts, out, **OPTS, resume=True)  # the damaged chunk is computed again
    assert np.array_equal(np.load(out), _uninterrupted(loaded, texts, tmp_path / "ref.npy"))

    stale, broken = tmp_path / "old.parts", tmp_path / "broken.parts"
    stale.mkdir()
    broken.mkdir()
    (stale / first.name).write_bytes(kept)
    (stale / storage.PARTS_MANIFEST).write_text('{"version": 1}')
    old = time.time() - storage.PARTS_STALE_S - 60
    for p in (*stale.iterdir(), stale):
        os.utime(p, (old, old))
    (broken / storage.PARTS_MANIFEST).write_text("{not json")
    assert sorted(storage.sweep_orphans(tmp_path)) == sorted([stale, broken]) and not stale.exists() and not broken.exists()


def test_two_steps_asking_for_the_same_vectors_at_once_extract_them_once(tiny_encoder, default_ds, cache, monkeypatch):
    """Two seeds of a grid (or two runs) on the same letters start together: one extracts, the other waits and loads the
    cached vectors. Before, both wrote the same chunks folder and the first to finish removed it under the other
    (FileNotFoundError in a Ray grid of the full suite)."""
    import threading

    monkeypatch.setattr(extract, "CHUNK_ROWS", CHUNK_ROWS)
    monkeypatch.setenv("CLINBENCH_BATCH_DELAY_S", "0.05")  # the first is still extracting when the second asks
    texts, fp32 = default_ds.texts[:40], Placement("cpu", "float32")
    out, stages = {}, []

    def step(name: str) -> None:
        ctx = StepContext(progress=lambda done, total, stage: stages.append(stage))
        out[name] = extract.embed(str(tiny_encoder), texts, **OPTS, placement=fp32, ctx=ctx)

    steps = [threading.Thread(target=step, args=(name,)) for name in ("a", "b")]
    for t in steps:
        t.start()
    for t in steps:
        t.join(120)
    assert sorted(stats.cache_hit for _, stats in out.values()) == [False, True], "one extracts, the other loads its vectors"
    assert np.array_equal(out["a"][0], out["b"][0])
    assert "waiting for another step that embeds the same letters" in stages
    assert sorted(p.suffix for p in storage.embeddings_dir().iterdir()) == [".json", ".npy"]
