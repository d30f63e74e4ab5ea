"""Atomic writes and hash-checked artifacts."""

from __future__ import annotations

import json

import joblib
import pytest

from engine import storage
from engine.errors import ArtifactError


def test_atomic_dir_leaves_nothing_on_failure(tmp_path):
    target = tmp_path / "art"
    with pytest.raises(RuntimeError), storage.atomic_dir(target) as tmp:
        (tmp / "half.bin").write_bytes(b"x")
        raise RuntimeError("boom")
    assert not target.exists() and list(tmp_path.iterdir()) == []


def test_atomic_dir_replaces_existing_only_on_success(tmp_path):
    target = tmp_path / "art"
    with storage.atomic_dir(target) as tmp:
        (tmp / "v").write_text("1")
    with pytest.raises(RuntimeError), storage.atomic_dir(target) as tmp:
        (tmp / "v").write_text("2")
        raise RuntimeError
    assert (target / "v").read_text() == "1"


def test_atomic_path_failure_keeps_old_file(tmp_path):
    target = tmp_path / "f.json"
    storage.atomic_write_json(target, {"a": 1})
    with pytest.raises(ValueError), storage.atomic_path(target) as tmp:
        tmp.write_text("partial")
        raise ValueError
    assert json.loads(target.read_text()) == {"a": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["f.json"]


def _sealed(tmp_path):
    folder = tmp_path / "eval"
    folder.mkdir()
    joblib.dump({"model": 1}, folder / "classifier.joblib")
    storage.seal_artifact(folder, {"kind": "test"})
    return folder


def test_verified_load_round_trip(tmp_path):
    folder = _sealed(tmp_path)
    assert storage.load_joblib_artifact(folder) == {"model": 1}
    assert storage.read_manifest(folder)["producer"] == "clinbench"


def test_tampered_file_is_refused(tmp_path):
    folder = _sealed(tmp_path)
    joblib.dump({"model": 2}, folder / "classifier.joblib")
    with pytest.raises(ArtifactError, match="does not match the hash"):
        storage.load_joblib_artifact(folder)


def test_foreign_manifest_is_refused(tmp_path):
    folder = _sealed(tmp_path)
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest["producer"] = "someone-else"
    (folder / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ArtifactError, match="not written by ClinBench"):
        storage.load_joblib_artifact(folder)


def test_unlisted_and_missing_manifest(tmp_path):
    folder = _sealed(tmp_path)
    (folder / "extra.joblib").write_bytes(b"x")
    with pytest.raises(ArtifactError, match="not listed"):
        storage.load_joblib_artifact(folder, "extra.joblib")
    (folder / "manifest.json").unlink()
    with pytest.raises(ArtifactError, match="No manifest"):
        storage.load_joblib_artifact(folder)


def test_text_hash_is_unambiguous():
    assert storage.sha256_texts(["ab", "c"]) != storage.sha256_texts(["a", "bc"])
