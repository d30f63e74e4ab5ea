"""Sealed artifacts: hashes checked on every load, foreign or tampered files refused, the cache lookup, atomic writing."""

from __future__ import annotations

import json

import pytest

from engine.cache import artifacts
from engine.errors import ArtifactError


def _sealed(tmp_path):
    folder = tmp_path / "eval"
    folder.mkdir()
    (folder / "classifier.json").write_text('{"model": 1}')
    artifacts.seal(folder, {"kind": "test"})
    return folder


def _load(folder, name="classifier.json"):
    return json.loads(artifacts.verified_file(folder, name).read_text())


def test_verified_load_round_trip(tmp_path):
    folder = _sealed(tmp_path)
    assert _load(folder) == {"model": 1}
    assert artifacts.read_manifest(folder)["producer"] == "clinbench"


def test_tampered_file_is_refused(tmp_path):
    folder = _sealed(tmp_path)
    (folder / "classifier.json").write_text('{"model": 2}')
    with pytest.raises(ArtifactError, match="does not match the hash"):
        _load(folder)


def test_foreign_manifest_is_refused(tmp_path):
    folder = _sealed(tmp_path)
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest["producer"] = "someone-else"
    (folder / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ArtifactError, match="not written by ClinBench"):
        _load(folder)


def test_unlisted_and_missing_manifest(tmp_path):
    folder = _sealed(tmp_path)
    (folder / "extra.json").write_text("{}")
    with pytest.raises(ArtifactError, match="not listed"):
        _load(folder, "extra.json")
    (folder / "manifest.json").unlink()
    with pytest.raises(ArtifactError, match="No manifest"):
        _load(folder)


def test_write_is_atomic_and_stored_finds_it(tmp_path):
    folder = tmp_path / "eval"

    def fail(tmp):
        (tmp / "half.bin").write_bytes(b"x")
        raise RuntimeError("killed mid-write")

    with pytest.raises(RuntimeError):
        artifacts.write(folder, {"metrics": {"macro_f1": 0.5}}, fail)
    assert not folder.exists() and artifacts.stored(folder, "m", "svc") is None
    manifest = artifacts.write(folder, {"metrics": {"macro_f1": 0.5}}, lambda tmp: (tmp / "a.txt").write_text("a"))
    assert set(manifest["files"]) == {"a.txt"}
    hit = artifacts.stored(folder, "m", "svc")
    assert hit.cache_hit and hit.metrics == {"macro_f1": 0.5} and hit.artifact == str(folder)


def test_stored_ignores_a_damaged_manifest(tmp_path):
    folder = tmp_path / "eval"
    folder.mkdir()
    (folder / "manifest.json").write_text("{not json")
    assert artifacts.stored(folder, "m", "svc") is None


def test_a_cache_hit_checks_every_file_and_a_damaged_artifact_is_quarantined(tmp_path):
    folder = tmp_path / "eval"
    artifacts.write(folder, {"metrics": {"macro_f1": 0.5}}, lambda tmp: (tmp / "classifier.skops").write_bytes(b"model"))
    assert artifacts.stored(folder, "m", "svc").cache_hit
    (folder / "classifier.skops").write_bytes(b"corrupted")  # a damaged file: never used, moved aside, recomputed
    assert artifacts.stored(folder, "m", "svc") is None
    assert not folder.exists() and [p.name.startswith(".corrupt-eval-") for p in tmp_path.iterdir()] == [True]


def test_a_changed_manifest_is_refused(tmp_path):
    folder = tmp_path / "eval"
    artifacts.write(folder, {"metrics": {"macro_f1": 0.5}}, lambda tmp: (tmp / "a.txt").write_text("a"))
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest["metrics"]["macro_f1"] = 0.99  # a figure edited by hand
    (folder / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ArtifactError, match="changed after it was written"):
        artifacts.read_manifest(folder)
    assert artifacts.stored(folder, "m", "svc") is None and not folder.exists()
