"""Model folders as users have them: sharded safetensors with an index, fp16 and bf16 weights, PyTorch pickles only
(refused with the reason unless the user opts in), a model type that needs its own code (refused unless the user opts
in), and a model too large for the machine (refused before any weight is read, with the figure)."""

from __future__ import annotations

import json
import shutil
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from engine import api
from engine.data.dataset import Dataset
from engine.errors import ModelTooLarge, ModelUnavailable
from engine.models import catalog
from tests.conftest import evaluate_cli
from tests.tiny_models import build

FAST = {"protocol": "holdout", "max_length": 64, "epochs": 1, "n_boot": 100}


@pytest.fixture(scope="module")
def letters(default_ds) -> Dataset:
    per, keep = Counter(), []
    for i, label in enumerate(default_ds.labels):
        if label in default_ds.classes[:2] and per[label] < 10:
            per[label] += 1
            keep.append(i)
    return Dataset([default_ds.texts[i] for i in keep], [default_ds.labels[i] for i in keep], "two labels", "text", "label")


def evaluate(folder, method: str, letters: Dataset, **options):
    spec = api.parse_spec({"models": [str(folder)], "methods": [method], "options": {**FAST, **options}})
    return api.run_in_process(spec, spec.steps(reference=False)[0], dataset=letters)


def copy_of(folder: Path, to: Path) -> Path:
    shutil.copytree(folder, to)
    return to


def test_sharded_safetensors_load_and_every_shard_is_in_the_identity(tiny_model, tmp_path, letters, cache):
    from transformers import AutoModelForMaskedLM

    folder = tmp_path / "sharded"
    AutoModelForMaskedLM.from_pretrained(tiny_model("bert")).save_pretrained(folder, max_shard_size="100KB")
    shutil.copy(tiny_model("bert") / "tokenizer.json", folder)
    shutil.copy(tiny_model("bert") / "tokenizer_config.json", folder)
    shards = sorted(folder.glob("model-*-of-*.safetensors"))
    assert len(shards) >= 2 and (folder / "model.safetensors.index.json").exists()
    for method in ("svc", "lora"):
        assert 0.0 <= evaluate(folder, method, letters).metrics["macro_f1"] <= 1.0
    before = catalog.locate(catalog.resolve(str(folder)))[1]["weights_sha256"]
    from safetensors.torch import load_file, save_file

    weights = load_file(shards[-1])
    save_file({k: v + 1 for k, v in weights.items()}, shards[-1], metadata={"format": "pt"})
    assert catalog.locate(catalog.resolve(str(folder)))[1]["weights_sha256"] != before, "the last shard is part of the identity"


@pytest.mark.parametrize("arch,dtype,methods", [("bert", "float16", ("svc", "lora")), ("llama", "bfloat16", ("svc", "lora", "zero-shot"))])
def test_half_precision_checkpoints_evaluate_and_train_in_fp32(arch, dtype, methods, tmp_path, default_ds, letters, cache):
    import torch
    from safetensors import safe_open

    from engine.finetune.loading import load_classifier_model
    from engine.models.devices import choose

    folder = build(arch, tmp_path / f"{arch}-{dtype}", default_ds.texts, dtype=dtype)
    with safe_open(str(folder / "model.safetensors"), "pt") as f:
        assert {f.get_tensor(k).dtype for k in f.keys()} == {getattr(torch, dtype)}  # noqa: SIM118
    net = load_classifier_model(str(folder), letters.classes, choose())[0]
    assert {p.dtype for p in net.parameters()} == {torch.float32}, "training keeps fp32 weights whatever the checkpoint holds"
    for method in methods:
        res = evaluate(folder, method, letters)
        assert 0.0 <= res.metrics["macro_f1"] <= 1.0
        assert np.isfinite(np.asarray(json.loads((Path(res.artifact) / "predictions.json").read_text())["scores"])).all()


@pytest.fixture
def pickled(tiny_model, tmp_path) -> Path:
    """The tiny BERT with its weights as pytorch_model.bin only (what older checkpoints on the hub have)."""
    import torch
    from safetensors.torch import load_file

    folder = copy_of(tiny_model("bert"), tmp_path / "pickled")
    torch.save(load_file(folder / "model.safetensors"), folder / "pytorch_model.bin")
    (folder / "model.safetensors").unlink()
    return folder


def test_pickle_only_weights_are_refused_with_the_reason_unless_the_user_opts_in(pickled, small_csv, letters, cache, monkeypatch):
    out = evaluate_cli(small_csv, pickled, "--method", "svc", "--max-length", "32")
    assert out.returncode == 2 and out.stderr.startswith("error: ") and "Traceback" not in out.stderr
    assert "pytorch_model.bin" in out.stderr and "can run code" in out.stderr and catalog.ALLOW_PICKLE in out.stderr
    monkeypatch.setenv(catalog.ALLOW_PICKLE, "1")
    assert 0.0 <= evaluate(pickled, "svc", letters).metrics["macro_f1"] <= 1.0


REMOTE_CONFIG = """from transformers import LlamaConfig


class TinyClinConfig(LlamaConfig):
    model_type = "tinyclin"
"""
REMOTE_MODEL = """from transformers import LlamaForCausalLM, LlamaModel

from .configuration_tinyclin import TinyClinConfig


class TinyClinModel(LlamaModel):
    config_class = TinyClinConfig


class TinyClinForCausalLM(LlamaForCausalLM):
    config_class = TinyClinConfig
"""


@pytest.fixture
def own_code(tiny_model, tmp_path) -> Path:
    """The tiny LLaMA as a model type of its own, whose classes are Python files in its folder (`auto_map`)."""
    folder = copy_of(tiny_model("llama"), tmp_path / "tinyclin")
    (folder / "configuration_tinyclin.py").write_text(REMOTE_CONFIG)
    (folder / "modeling_tinyclin.py").write_text(REMOTE_MODEL)
    config = json.loads((folder / "config.json").read_text())
    config |= {
        "model_type": "tinyclin",
        "architectures": ["TinyClinForCausalLM"],
        "auto_map": {
            "AutoConfig": "configuration_tinyclin.TinyClinConfig",
            "AutoModel": "modeling_tinyclin.TinyClinModel",
            "AutoModelForCausalLM": "modeling_tinyclin.TinyClinForCausalLM",
        },
    }
    (folder / "config.json").write_text(json.dumps(config))
    return folder


def test_a_model_that_needs_its_own_code_is_refused_unless_the_user_opts_in(own_code, letters, cache, monkeypatch):
    with pytest.raises(ModelUnavailable, match=r"own Python code \(configuration_tinyclin\.py, modeling_tinyclin\.py\)") as exc:
        evaluate(own_code, "svc", letters)
    assert catalog.TRUST_REMOTE_CODE in str(exc.value)
    monkeypatch.setenv(catalog.TRUST_REMOTE_CODE, "1")
    for method in ("svc", "zero-shot"):
        res = evaluate(own_code, method, letters)
        assert 0.0 <= res.metrics["macro_f1"] <= 1.0
    assert res.manifest["model"]["code_sha256"], "the code that built the model is part of its identity"
    monkeypatch.delenv(catalog.TRUST_REMOTE_CODE)
    other = copy_of(own_code, own_code.with_name("tinyclin-copy"))
    with pytest.raises(ModelUnavailable, match="runs no code from a model folder"):  # trusting one folder trusted no other
        evaluate(other, "svc", letters)


def test_a_known_model_type_is_built_by_transformers_whatever_code_its_folder_carries(own_code, tiny_model, tmp_path):
    folder = copy_of(tiny_model("llama"), tmp_path / "llama-with-code")
    shutil.copy(own_code / "modeling_tinyclin.py", folder)
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps(config | {"auto_map": {"AutoModel": "modeling_tinyclin.TinyClinModel"}}))
    assert catalog.remote_code(folder) is None
    assert type(catalog.load(str(folder)).model).__module__.startswith("transformers.models.llama")


@pytest.fixture
def too_large(tiny_model, tmp_path) -> Path:
    """A 70B LLaMA's config.json beside a stub weights file: the size is read from the config alone."""
    from safetensors.torch import save_file
    from transformers import LlamaConfig

    folder = tmp_path / "llama-70b"
    folder.mkdir()
    LlamaConfig(
        hidden_size=8192, intermediate_size=28672, num_hidden_layers=80, num_attention_heads=64, num_key_value_heads=8, vocab_size=128256
    ).save_pretrained(folder)
    import torch

    save_file({"stub": torch.zeros(1)}, folder / "model.safetensors", metadata={"format": "pt"})
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(tiny_model("llama") / name, folder)
    return folder


def test_a_model_too_large_for_the_machine_is_refused_before_loading_with_the_figure(too_large, small_csv, letters, cache):
    for method in ("svc", "lora", "zero-shot"):
        with pytest.raises(ModelTooLarge, match=r"69\.50B parameters and needs about \d+\.\d GiB") as exc:
            evaluate(too_large, method, letters)
        assert "free" in str(exc.value)
    out = evaluate_cli(small_csv, too_large, "--method", "svc", "--max-length", "32")
    assert out.returncode == 2 and out.stderr.startswith("error: ") and "B parameters" in out.stderr and "Traceback" not in out.stderr
