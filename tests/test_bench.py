"""The extraction benchmark's attention bound: the timing hook must see every attention call of the model."""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def bench_extract():
    sys.path.insert(0, str(ROOT / "bench"))
    try:
        yield importlib.import_module("extract")
    finally:
        sys.path.remove(str(ROOT / "bench"))


@pytest.mark.parametrize("fixture", ["tiny_encoder", "tiny_decoder"])
def test_attention_timing_sees_every_layer_of_every_batch(bench_extract, fixture, request, default_ds, tmp_path, monkeypatch):
    import torch.nn.functional as F

    from engine import features, models

    monkeypatch.setattr(bench_extract, "wait_quiet", lambda *a, **k: None)  # no waiting for a quiet machine in tests
    loaded = models.load(str(request.getfixturevalue(fixture)))
    texts = list(default_ds.texts[:40])
    original = F.scaled_dot_product_attention
    out = bench_extract.run_engine(loaded, texts, tmp_path)  # warm-up pass untimed, then the timed pass
    assert F.scaled_dot_product_attention is original  # the hook is removed again
    ids, _ = features.tokenize(loaded.tokenizer, texts, bench_extract.MAX_LENGTH)
    n_batches = len(features.plan_batches([len(x) for x in ids], features.default_batch_tokens("cpu")))
    assert out["attention_calls"] == n_batches * loaded.model.config.num_hidden_layers
    assert 0 < out["attention_seconds"] < out["seconds"]
    assert out["tokens"] == sum(len(x) for x in ids)


def test_scale_mode_letters_all_differ_and_the_rss_sampler_sees_the_process(bench_extract, tmp_path):
    csv = tmp_path / "mts.csv"
    csv.write_text('transcription\n"first letter"\n""\n"second letter"\n')
    letters = bench_extract.scale_letters(csv, 5)
    assert len(letters) == len(set(letters)) == 5 and letters[2].startswith("first letter")  # repeated, numbered
    before = bench_extract.rss_bytes()
    with bench_extract.RssSampler(every=0.01) as sampler:
        block = b"\x01" * (64 * 2**20)  # written, so resident
    assert sampler.peak >= before + 48 * 2**20 and len(sampler.samples) >= 2 and len(block)
