"""Embedding extraction mechanics on tiny random models."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from engine.cache.context import StepContext
from engine.errors import Cancelled, ClinBenchError, SpecError
from engine.features import extract, windows
from engine.models import catalog
from engine.models.devices import Placement

FP32 = Placement("cpu", "float32")


@pytest.fixture(scope="module")
def decoder(tiny_decoder):
    return catalog.load(str(tiny_decoder), FP32)


@pytest.fixture(scope="module")
def encoder(tiny_encoder):
    return catalog.load(str(tiny_encoder), FP32)


def test_last_token_pooling_under_left_and_right_padding():
    hidden = torch.arange(2 * 4 * 1, dtype=torch.float32).reshape(2, 4, 1)
    right = torch.tensor([[1, 1, 0, 0], [1, 1, 1, 1]])
    left = torch.tensor([[0, 0, 1, 1], [1, 1, 1, 1]])
    assert extract.pool(hidden, right, "last").flatten().tolist() == [1.0, 7.0]
    assert extract.pool(hidden, left, "last").flatten().tolist() == [3.0, 7.0]


def test_mean_pooling_ignores_padding():
    hidden = torch.tensor([[[1.0], [3.0], [100.0]]])
    assert extract.pool(hidden, torch.tensor([[1, 1, 0]]), "mean").item() == 2.0


def test_last_token_matches_unpadded_forward(decoder, tmp_path):
    """The pooled vector of a padded letter equals that of the letter run alone."""
    texts = ["chest pain and shortness of breath", "the patient is a 45 year old woman with a long history of migraine headaches"]
    ids = [decoder.tokenizer(t)["input_ids"] for t in texts]
    with torch.inference_mode():
        alone = decoder.model(input_ids=torch.tensor([ids[0]])).last_hidden_state[0, -1]
    out = extract.extract(decoder, texts, tmp_path / "v.npy", pooling="last", max_length=64)
    assert out.n_letters == 2
    vec = np.load(tmp_path / "v.npy")[0]
    np.testing.assert_allclose(vec, alone.numpy(), rtol=1e-4, atol=1e-5)


def test_results_do_not_depend_on_batching(encoder, default_ds):
    texts = default_ds.texts[:24]
    a, _ = extract.embed(encoder, texts, max_length=128, batch_tokens=128, use_cache=False)
    b, _ = extract.embed(encoder, texts, max_length=128, batch_tokens=4096, use_cache=False)
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-5)


def test_plan_batches_respects_the_token_budget():
    lengths = [5, 100, 30, 30, 64, 7, 100]
    batches = extract.plan_batches(lengths, batch_tokens=128)
    assert sorted(i for b in batches for i in b) == list(range(len(lengths)))
    for b in batches:
        assert len(b) == 1 or len(b) * max(lengths[i] for i in b) <= 128
    assert lengths[batches[0][0]] == 100  # longest first


def test_truncation_is_counted(decoder, default_ds):
    _, stats = extract.embed(decoder, default_ds.texts[:10], max_length=32, use_cache=False)
    assert stats.n_truncated == 10 and stats.n_tokens == 10 * 32


def test_cache_hit_runs_no_forward_pass(decoder, default_ds):
    texts = default_ds.texts[:12]
    first, s1 = extract.embed(decoder, texts, max_length=64)
    before = extract.FORWARD_PASSES
    second, s2 = extract.embed(decoder, texts, max_length=64)
    assert before == extract.FORWARD_PASSES and s2.cache_hit and not s1.cache_hit and s1.key == s2.key
    np.testing.assert_array_equal(np.asarray(first), np.asarray(second))
    # A different pooling or max_length is a different key.
    _, s3 = extract.embed(decoder, texts, max_length=48)
    assert s3.key != s1.key and before < extract.FORWARD_PASSES


def test_cache_by_name_does_not_load_the_model(tiny_decoder, default_ds, monkeypatch):
    texts = default_ds.texts[:6]
    extract.embed(str(tiny_decoder), texts, max_length=32, placement=FP32)
    monkeypatch.setattr(catalog, "load", lambda *a, **k: pytest.fail("model loaded on a cache hit"))
    _, stats = extract.embed(str(tiny_decoder), texts, max_length=32, placement=FP32)
    assert stats.cache_hit


def test_cancel_leaves_no_vectors_only_the_chunks_to_resume_from(decoder, default_ds):
    from engine.cache.storage import embeddings_dir

    before = set(embeddings_dir().iterdir())
    calls = {"n": 0}

    def stop():
        calls["n"] += 1
        return calls["n"] > 2

    with pytest.raises(Cancelled):
        extract.embed(decoder, default_ds.texts[:40], max_length=64, batch_tokens=128, ctx=StepContext(should_stop=stop))
    new = set(embeddings_dir().iterdir()) - before
    assert [p.suffix for p in new] == [".parts"]  # no .npy, no temp file, no metadata: the sealed chunks (tests/test_chunks.py)


def test_cls_pooling_refused_for_decoders(decoder):
    with pytest.raises(ClinBenchError, match="CLS pooling needs an encoder"):
        extract.embed(decoder, ["a letter"], pooling="cls", use_cache=False)


def test_progress_is_reported(encoder, default_ds):
    seen = []
    extract.embed(
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
    a, _ = extract.embed(decoder, texts, max_length=48, batch_tokens=96, use_cache=False)
    b, _ = extract.embed(decoder, texts[::-1], max_length=48, batch_tokens=96, use_cache=False)
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b)[::-1])


def test_a_damaged_embeddings_meta_file_is_a_cache_miss(cache, tiny_encoder, default_ds):
    from engine.cache.storage import embeddings_dir

    texts = default_ds.texts[:6]
    _, first = extract.embed(str(tiny_encoder), texts, max_length=16)
    (embeddings_dir() / f"{first.key}.json").write_text("{not json")
    again, stats = extract.embed(str(tiny_encoder), texts, max_length=16)
    assert not stats.cache_hit and again.shape[0] == 6
    assert extract.embed(str(tiny_encoder), texts, max_length=16)[1].cache_hit, "rewritten, so the next call hits"


# --- long letters in overlapping windows (option `windows`) ---------------------------


def _long_and_short(default_ds, tokenizer, max_length: int) -> tuple[list[str], list[str]]:
    """Five letters longer than 3 x max_length tokens, and five that fit in max_length (their first words)."""
    lengths = [len(x) for x in extract.tokenize(tokenizer, default_ds.texts[:80], 10**9)[0]]
    long = [t for t, n in zip(default_ds.texts, lengths) if n > 3 * max_length][:5]
    short = [" ".join(t.split()[: max_length // 3]) for t in default_ds.texts[80:85]]
    assert len(long) == 5 and all(len(x) <= max_length for x in extract.tokenize(tokenizer, short, 10**9)[0])
    return long, short


def test_windows_split_a_long_letter_with_overlap_and_keep_the_special_tokens():
    ids = [101, *range(1000, 1030), 102]  # [CLS] 30 tokens [SEP]
    parts, cut = windows.split(ids, [101], [102], max_length=10, windows=8)  # 8 letter tokens a window, starting 0, 6, 12, 18, 24
    assert [p[0] for p in parts] == [101] * 5 and all(p[-1] == 102 and len(p) <= 10 for p in parts) and not cut
    assert parts[0][1:-1] == list(range(1000, 1008)) and parts[1][1:3] == [1006, 1007]  # a quarter shared with the next
    assert parts[-1][-2] == 1029  # read to the end
    two, cut = windows.split(ids, [101], [102], max_length=10, windows=2)
    assert len(two) == 2 and cut and windows.reach(10, 2, 2) == 2 + 8 + 6 < len(ids)


@pytest.mark.parametrize("pooling", ["mean", "cls"])
def test_windows_change_long_letters_only_for_an_encoder(encoder, default_ds, tmp_path, pooling):
    long, short = _long_and_short(default_ds, encoder.tokenizer, 24)
    texts = [long[0], short[0], long[1], short[1], long[2], short[2]]
    cut = extract.extract(encoder, texts, tmp_path / "cut.npy", pooling=pooling, max_length=24, batch_tokens=96)
    win = extract.extract(encoder, texts, tmp_path / "win.npy", pooling=pooling, max_length=24, batch_tokens=96, windows=3)
    a, b = np.load(tmp_path / "cut.npy"), np.load(tmp_path / "win.npy")
    for i in (0, 2, 4):  # long: the windows read more of the letter
        assert not np.allclose(a[i], b[i], atol=1e-4)
    np.testing.assert_allclose(a[[1, 3, 5]], b[[1, 3, 5]], rtol=1e-5, atol=1e-6)  # short: one window, as cut
    assert cut.n_truncated == 3 and cut.n_windows == 6 and win.windows == 3 and win.n_windows == 3 * 3 + 3
    assert win.n_truncated == 3  # longer than 3 windows of 24 reach: honestly still cut
    # Short letters alone meet the same batches either way: the identical vector.
    extract.extract(encoder, short, tmp_path / "s1.npy", pooling=pooling, max_length=24)
    extract.extract(encoder, short, tmp_path / "s3.npy", pooling=pooling, max_length=24, windows=3)
    np.testing.assert_array_equal(np.load(tmp_path / "s1.npy"), np.load(tmp_path / "s3.npy"))


def test_windows_mean_pooling_is_the_token_weighted_mean_of_each_window_alone(encoder, default_ds, tmp_path):
    long, short = _long_and_short(default_ds, encoder.tokenizer, 24)
    texts = [short[0], long[0], short[1], long[1]]  # vector i belongs to letter i, whatever the batches
    stats = extract.extract(encoder, texts, tmp_path / "v.npy", max_length=24, batch_tokens=64, windows=2)
    got = np.load(tmp_path / "v.npy")
    prefix, suffix = windows.special_tokens(encoder.tokenizer)
    for i, text in enumerate(texts):
        ids = encoder.tokenizer(text)["input_ids"]
        parts = windows.split(ids, prefix, suffix, 24, 2)[0] if len(ids) > 24 else [ids]
        with torch.inference_mode():
            vecs = [encoder.model(input_ids=torch.tensor([p])).last_hidden_state[0].mean(0).numpy() for p in parts]
        want = np.average(vecs, axis=0, weights=[len(p) for p in parts])
        np.testing.assert_allclose(got[i], want, rtol=1e-4, atol=1e-5)
    assert stats.n_truncated == 2 and stats.n_tokens == sum(min(len(encoder.tokenizer(t)["input_ids"]), 24) for t in texts) + 2 * 24


def test_windows_for_a_decoder_average_each_window_last_token(decoder, default_ds, tmp_path):
    long, _short = _long_and_short(default_ds, decoder.tokenizer, 32)
    stats = extract.extract(decoder, long[:2], tmp_path / "v.npy", pooling="last", max_length=32, windows=4)
    got = np.load(tmp_path / "v.npy")
    for i, text in enumerate(long[:2]):
        parts = windows.split(decoder.tokenizer(text)["input_ids"], [], [], 32, 4)[0]
        with torch.inference_mode():
            lasts = [decoder.model(input_ids=torch.tensor([p])).last_hidden_state[0, -1].numpy() for p in parts]
        np.testing.assert_allclose(got[i], np.average(lasts, axis=0, weights=[len(p) for p in parts]), rtol=1e-4, atol=1e-5)
    assert stats.n_windows == sum(len(windows.split(decoder.tokenizer(t)["input_ids"], [], [], 32, 4)[0]) for t in long[:2])


def test_windows_enter_the_cache_key_and_one_window_keeps_the_old_key(encoder, default_ds):
    long, short = _long_and_short(default_ds, encoder.tokenizer, 24)
    texts = long + short
    identity = {"name": "x"}
    assert extract.embedding_key(identity, "mean", 24, "float32", "h") == extract.embedding_key(identity, "mean", 24, "float32", "h", 1)
    assert extract.embedding_key(identity, "mean", 24, "float32", "h", 2) != extract.embedding_key(identity, "mean", 24, "float32", "h")
    _, cut = extract.embed(encoder, texts, max_length=24)
    v2, two = extract.embed(encoder, texts, max_length=24, windows=2)
    _, three = extract.embed(encoder, texts, max_length=24, windows=3)
    assert len({cut.key, two.key, three.key}) == 3 and not two.cache_hit
    again, hit = extract.embed(encoder, texts, max_length=24, windows=2)
    assert hit.cache_hit and hit.windows == 2 and hit.n_truncated == two.n_truncated
    np.testing.assert_array_equal(np.asarray(again), np.asarray(v2))
    with pytest.raises(SpecError, match="windows"):
        extract.embed(encoder, texts, max_length=24, windows=0)


def test_a_stored_classifier_embeds_a_new_letter_in_the_windows_it_was_trained_on(cache, small_csv, tiny_encoder):
    from engine.cache.storage import embeddings_dir
    from engine.methods import classifiers
    from engine.runs import experiment
    from tests.conftest import run_step

    ds = experiment.DataSpec(str(small_csv), "letter", "specialty").load()
    res = run_step(ds, tiny_encoder, "svc", max_length=32, windows=3, grid=False, n_boot=100)
    assert res.manifest["embedder"] == {"pooling": "mean", "max_length": 32, "windows": 3}
    estats = res.manifest["embeddings"]
    assert estats["windows"] == 3 and estats["n_windows"] > len(ds.texts)
    stored = np.load(embeddings_dir() / f"{estats['key']}.npy")
    clf = classifiers.load(res.artifact)
    assert clf.windows == 3
    np.testing.assert_allclose(clf.embed(ds.texts), stored, rtol=1e-3, atol=1e-3)  # (bf16: batches may differ in the last bit)
    assert sum(clf.truncated(ds.texts)) == estats["n_truncated"]
