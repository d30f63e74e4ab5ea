"""Atomic writes and content hashes."""

from __future__ import annotations

import json

import pytest

from engine.cache import storage


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


def test_text_hash_is_unambiguous():
    assert storage.sha256_texts(["ab", "c"]) != storage.sha256_texts(["a", "bc"])
