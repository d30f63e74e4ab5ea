"""Saved datasets: uploads kept by content, descriptions saved, listed and forgotten."""

from __future__ import annotations

import pytest

from engine import datasets, experiment
from engine.errors import DataError


def test_saved_datasets_round_trip_and_errors(cache, small_csv):
    content = small_csv.read_bytes()
    path = datasets.store_upload("my letters.csv", content)
    assert path.read_bytes() == content and datasets.store_upload("my letters.csv", content) == path
    with pytest.raises(DataError, match="unsupported file type"):
        datasets.store_upload("letters.xlsx", b"x")
    with pytest.raises(DataError, match=r"text column 'txt' not found.*Did you mean 'text'|not found"):
        datasets.save(path, "mine", "txt", "specialty")
    saved = datasets.save(path, "mine", "letter", "specialty")
    listed, skipped = datasets.list_saved()
    assert [s.id for s in listed] == [saved.id] and not skipped and saved.n_letters == 60
    ds = experiment.parse_spec({"data": saved.spec_data(), "models": ["minilm"]}).data.load()
    assert ds.data_hash == saved.data_hash
    datasets.delete(saved.id)
    assert datasets.list_saved()[0] == [] and path.exists()  # the file stays
