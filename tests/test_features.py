"""Embedding extraction mechanics on tiny random models."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from engine import features, models
from engine.context import StepContext
from engine.devices import Placement
from engine.errors import Cancelled, ClinBenchError

FP32 = Placement("cpu", "float32")


@pytest.fixture(scope="module")
def decoder(tiny_decoder):
    return models.load(str(tiny_decoder), FP32)


@pytest.fixture(scope="module")
def encoder(tiny_encoder):
    return models.load(str(tiny_encoder), FP32)


def test_last_token_pooling_under_left_and_right_padding():
    hidden = torch.arange(2 * 4 * 1, dtype=torch.float32).reshape(2, 4, 1)
    right = torch.tensor([[1, 1, 0, 0], [1, 1, 1, 1]])
    left = torch.tensor([[0, 0, 1, 1], [1, 1, 1, 1]])
    assert features.pool(hidden, right, "last").flatten().tolist() == [1.0, 7.0]
    assert features.pool(hidden, left, "last").flatten().tolist() == [3.0, 7.0]


def test_mean_pooling_ignores_padding():
    hidden = torch.tensor([[[1.0], [3.0], [100.0]]])
    assert features.pool(hidden, torch.tensor([[1, 1, 0]]), "mean").item() == 2.0


def test_last_token_matches_unpadded_forward(decoder, tmp_path):
    """The pooled vector of a padded letter equals that of the letter run alone."""
    texts = ["chest pain and shortness of breath", "the patient is a 45 year old woman with a long history of migraine headaches"]
    ids = [decoder.tokenizer(t)["input_ids"] for t in texts]
    with torch.inference_mode():
        alone = decoder.model(input_ids=torch.tensor([ids[0]])).last_hidden_state[0, -1]
    out = features.extract(decoder, texts, tmp_path / "v.npy", pooling="last", max_length=64)
    assert out.n_letters == 2
    vec = np.load(tmp_path / "v.npy")[0]
    np.testing.assert_allclose(vec, alone.numpy(), rtol=1e-4, atol=1e-5)


def test_results_do_not_depend_on_batching(encoder, default_ds):
    texts = default_ds.texts[:24]
    a, _ = features.embed(encoder, texts, max_length=128, batch_tokens=128, use_cache=False)
    b, _ = features.embed(encoder, texts, max_length=128, batch_tokens=4096, use_cache=False)
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-5)


def test_plan_batches_respects_the_token_budget():
    lengths = [5, 100, 30, 30, 64, 7, 100]
    batches = features.plan_batches(lengths, batch_tokens=128)
    assert sorted(i for b in batches for i in b) == list(range(len(lengths)))
    for b in batches:
        assert len(b) == 1 or len(b) * max(lengths[i] for i in b) <= 128
    assert lengths[batches[0][0]] == 100  # longest first


def test_truncation_is_counted(decoder, default_ds):
    _, stats = features.embed(decoder, default_ds.texts[:10], max_length=32, use_cache=False)
    assert stats.n_truncated == 10 and stats.n_tokens == 10 * 32


def test_cache_hit_runs_no_forward_pass(decoder, default_ds):
    texts = default_ds.texts[:12]
    first, s1 = features.embed(decoder, texts, max_length=64)
    before = features.FORWARD_PASSES
    second, s2 = features.embed(decoder, texts, max_length=64)
    assert before == features.FORWARD_PASSES and s2.cache_hit and not s1.cache_hit and s1.key == s2.key
    np.testing.assert_array_equal(np.asarray(first), np.asarray(second))
    # A different pooling or max_length is a different key.
    _, s3 = features.embed(decoder, texts, max_length=48)
    assert s3.key != s1.key and before < features.FORWARD_PASSES


def test_cache_by_name_does_not_load_the_model(tiny_decoder, default_ds, monkeypatch):
    texts = default_ds.texts[:6]
    features.embed(str(tiny_decoder), texts, max_length=32, placement=FP32)
    monkeypatch.setattr(models, "load", lambda *a, **k: pytest.fail("model loaded on a cache hit"))
    _, stats = features.embed(str(tiny_decoder), texts, max_length=32, placement=FP32)
    assert stats.cache_hit


def test_cancel_leaves_no_vectors(decoder, default_ds):
    from engine.storage import embeddings_dir

    before = set(embeddings_dir().iterdir())
    calls = {"n": 0}

    def stop():
        calls["n"] += 1
        return calls["n"] > 2

    with pytest.raises(Cancelled):
        features.embed(decoder, default_ds.texts[:40], max_length=64, batch_tokens=128, ctx=StepContext(should_stop=stop))
    assert set(embeddings_dir().iterdir()) == before  # no .npy, no temp file, no metadata


def test_cls_pooling_refused_for_decoders(decoder):
    with pytest.raises(ClinBenchError, match="CLS pooling needs an encoder"):
        features.embed(decoder, ["a letter"], pooling="cls", use_cache=False)


def test_progress_is_reported(encoder, default_ds):
    seen = []
    features.embed(
        encoder,
        default_ds.texts[:8],
        max_length=32,
        use_cache=False,
        batch_tokens=64,
        ctx=StepContext(progress=lambda d, t, s: seen.append((d, t, s))),
    )
    assert seen[-1][0] == seen[-1][1] == 8 and any(s == "embedding" for *_, s in seen)


def test_vectors_do_not_depend_on_letter_order(decoder, default_ds):
    texts = default_ds.texts[:20] + default_ds.texts[:4]  # duplicates make equal-length ties
    a, _ = features.embed(decoder, texts, max_length=48, batch_tokens=96, use_cache=False)
    b, _ = features.embed(decoder, texts[::-1], max_length=48, batch_tokens=96, use_cache=False)
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b)[::-1])


def test_a_damaged_embeddings_meta_file_is_a_cache_miss(cache, tiny_encoder, default_ds):
    from engine.storage import embeddings_dir

    texts = default_ds.texts[:6]
    _, first = features.embed(str(tiny_encoder), texts, max_length=16)
    (embeddings_dir() / f"{first.key}.json").write_text("{not json")
    again, stats = features.embed(str(tiny_encoder), texts, max_length=16)
    assert not stats.cache_hit and again.shape[0] == 6
    assert features.embed(str(tiny_encoder), texts, max_length=16)[1].cache_hit, "rewritten, so the next call hits"
