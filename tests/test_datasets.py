"""Saved datasets: uploads kept by content, descriptions saved, listed and forgotten."""

from __future__ import annotations

import pytest

from engine.data import datasets
from engine.errors import DataError
from engine.runs import experiment


def test_saved_datasets_round_trip_and_errors(cache, small_csv):
    content = small_csv.read_bytes()
    path = datasets.store_upload("my letters.csv", content)
    assert path.read_bytes() == content and datasets.store_upload("my letters.csv", content) == path
    with pytest.raises(DataError, match="unsupported file type"):
        datasets.store_upload("letters.xls", b"x")
    with pytest.raises(DataError, match=r"text column 'txt' not found.*Did you mean 'text'|not found"):
        datasets.save(path, "mine", "txt", "specialty")
    saved = datasets.save(path, "mine", "letter", "specialty")
    listed, skipped = datasets.list_saved()
    assert [s.id for s in listed] == [saved.id] and not skipped and saved.n_letters == 60
    ds = experiment.parse_spec({"data": saved.spec_data(), "models": ["minilm"]}).data.load()
    assert ds.data_hash == saved.data_hash
    datasets.delete(saved.id)
    assert datasets.list_saved()[0] == [] and path.exists()  # the file stays


def test_a_saved_dataset_keeps_its_data_options_and_a_run_reads_them_back(cache, tmp_path):
    rows = ["id,q,ctx,ans,split,label"] + [f"{i},question {i},context {i} words,answer {i},{'test' if i % 4 == 0 else 'train'},{'ab'[i % 2]}" for i in range(16)]  # fmt: skip
    path = datasets.store_upload("qa.csv", "\n".join(rows).encode())
    plain = datasets.save(path, "plain", "q", "label")
    options = {"text_template": "Q: {q} C: {ctx}", "split_column": "split", "answer_column": "ans"}
    saved = datasets.save(path, "qa", "unused", "label", **options)
    assert saved.options == options and saved.id != plain.id  # the same file read two ways is two saved datasets
    assert {s.id for s in datasets.list_saved()[0]} == {plain.id, saved.id}
    ds = experiment.parse_spec({"data": datasets.get(saved.id).spec_data(), "models": ["tfidf"]}).data.load()
    assert ds.texts[1] == "Q: question 1 C: context 1 words" and ds.answers[1] == "answer 1"
    assert ds.split.count("test") == 4 and ds.data_hash == saved.data_hash
