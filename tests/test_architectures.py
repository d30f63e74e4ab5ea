"""Any model a user picks: tiny random models of thirteen architectures (tests/tiny_models.py) through every method that
applies to them, with default options (only what keeps it fast: a few letters, max_length 64, one epoch), through the
front door (engine.api), and their stored classifiers through Classify's answer path (api.load_classifier +
predict_proba), which must reproduce the step's own test scores. Then what differs between architectures: LoRA targets,
heads of several layers, left padding, sliding windows, gradient checkpointing."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from engine import api
from engine.data.dataset import Dataset
from tests.tiny_models import DECODERS, ENCODERS

ENCODER_METHODS = ("svc", "logreg", "linear-probe", "lora", "lora-svc", "setfit", "domain-adapt", "adapt-svc")
DECODER_METHODS = ("svc", "lora", "zero-shot", "few-shot", "instruct-lora", "domain-adapt")
CELLS = [(a, m) for a in ENCODERS for m in ENCODER_METHODS] + [(a, m) for a in DECODERS for m in DECODER_METHODS]
FAST = {"protocol": "holdout", "max_length": 64, "epochs": 1, "n_boot": 100, "setfit_pairs": 40, "setfit_max_length": 32}
# What LoRA adapts with target_modules unset, per architecture: (layer names, layers in the 2 blocks). peft's defaults;
# BioGPT ClinBench's own; DistilBERT, ModernBERT and Phi-3 (none in peft's table): every linear layer of the blocks.
TARGETS = {
    "bert": (["query", "value"], 4),
    "roberta": (["query", "value"], 4),
    "electra": (["query", "value"], 4),
    "deberta-v2": (["query_proj", "value_proj"], 4),
    "modernbert": (["Wi", "Wo", "Wqkv"], 8),
    "distilbert": (["k_lin", "lin1", "lin2", "out_lin", "q_lin", "v_lin"], 12),
    "gpt2": (["c_attn"], 2),
    "biogpt": (["k_proj", "q_proj", "v_proj"], 6),
    "llama": (["q_proj", "v_proj"], 4),
    "mistral": (["q_proj", "v_proj"], 4),
    "qwen2": (["q_proj", "v_proj"], 4),
    "gemma2": (["q_proj", "v_proj"], 4),
    "phi3": (["down_proj", "gate_up_proj", "o_proj", "qkv_proj"], 8),
}


@pytest.fixture(scope="module")
def letters(default_ds) -> Dataset:
    """30 real letters, 10 of each of three labels."""
    classes = default_ds.classes[:3]
    per, keep = Counter(), []
    for i, label in enumerate(default_ds.labels):
        if label in classes and per[label] < 10:
            per[label] += 1
            keep.append(i)
    return Dataset([default_ds.texts[i] for i in keep], [default_ds.labels[i] for i in keep], "three labels", "text", "label")


@pytest.fixture(scope="module")
def matrix(tmp_path_factory):
    """One cache for the matrix (lora-svc reuses lora's adapters, as a user's run does), in fp32: the stored classifiers must
    reproduce the steps' test scores to 1e-5, not to bf16's last bits."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("CLINBENCH_CACHE", str(tmp_path_factory.mktemp("matrix-cache")))
        mp.setenv("CLINBENCH_DTYPE", "float32")
        yield


def evaluate(folder: Path, method: str, letters: Dataset, **options):
    spec = api.parse_spec({"models": [str(folder)], "methods": [method], "options": {**FAST, **options}})
    return api.run_in_process(spec, spec.steps(reference=False)[0], dataset=letters)


def lora_record(manifest: dict) -> dict | None:
    """The training record of a step that trained LoRA adapters itself (adapt-svc: its adaptation's)."""
    if manifest["method"] == "adapt-svc":
        return manifest["adaptation"]["training"]["training"]
    return manifest.get("training") if manifest["method"] in ("lora", "instruct-lora", "domain-adapt") else None


@pytest.mark.parametrize("arch,method", CELLS, ids=[f"{a}-{m}" for a, m in CELLS])
def test_every_architecture_through_every_method(arch, method, tiny_model, letters, matrix):
    res = evaluate(tiny_model(arch), method, letters)
    record = lora_record(res.manifest)
    if record is not None:  # the manifest names what LoRA adapted: the architecture's default, never a head
        names, n_layers = TARGETS[arch]
        assert (record["target_modules"], record["lora_layers"]) == (names, n_layers)
    if method == "domain-adapt":
        assert np.isfinite(res.metrics["perplexity_after"])
        vectors, _ = api.embed(res.metrics["adapted_model"], letters.texts[:4], pooling="mean", max_length=32)  # the adapted model embeds
        assert vectors.shape[0] == 4 and np.isfinite(vectors).all()
        return
    assert 0.0 <= res.metrics["macro_f1"] <= 1.0
    stored = json.loads((Path(res.artifact) / "predictions.json").read_text())
    classifier = api.load_classifier(res.artifact)  # what Classify, `predict` and the HTTP endpoint load
    proba = classifier.predict_proba([letters.texts[i] for i in stored["test_index"]])
    assert proba.shape == (len(stored["test_index"]), 3) and np.allclose(proba.sum(1), 1.0)
    assert np.allclose(proba, np.asarray(stored["scores"]), atol=1e-5), "the stored classifier does not answer as the step scored"


def test_a_head_of_several_layers_is_trained_once_and_loads_back(tiny_model, letters, matrix):
    """RoBERTa's classifier is dense + out_proj: it is peft's one module to save (named once, not with its layers), its
    trained weights are in the adapter, and the lora-svc step, which reloads the adapter, runs (it raised KeyError
    'base_model.model.classifier.dense.weight' before)."""
    from safetensors import safe_open

    res = evaluate(tiny_model("roberta"), "lora", letters)
    training = res.manifest["training"]
    assert training["head_modules"] == training["modules_to_save"] == ["classifier"]
    with safe_open(str(Path(res.artifact) / "adapter" / "adapter_model.safetensors"), "pt") as f:
        saved = sorted(k for k in f.keys() if "lora_" not in k)  # noqa: SIM118 (a safetensors file is no dict)
    assert saved == [f"base_model.model.classifier.{w}" for w in ("dense.bias", "dense.weight", "out_proj.bias", "out_proj.weight")]
    assert evaluate(tiny_model("roberta"), "lora-svc", letters).metrics["macro_f1"] >= 0.0


def test_an_adapter_with_nested_heads_from_an_earlier_version_is_moved_aside(tiny_model, letters, matrix):
    """An adapter stored by ClinBench <= 0.2 named a head and its layers both (classifier, classifier.dense, ...): peft
    cannot load it back. Loading it says so and moves the artifact aside, so that running the step again trains one."""
    from engine.cache import artifacts
    from engine.errors import ArtifactError

    res = evaluate(tiny_model("electra"), "lora", letters, seed=7)
    folder = Path(res.artifact)
    config = folder / "adapter" / "adapter_config.json"
    legacy = json.loads(config.read_text()) | {"modules_to_save": ["classifier.dense", "classifier.out_proj", "classifier", "score"]}
    config.write_text(json.dumps(legacy))
    artifacts.seal(folder, artifacts.read_manifest(folder))  # as that version sealed it
    with pytest.raises(ArtifactError, match="run its lora step again"):
        api.load_classifier(folder)
    assert not folder.exists()
    again = evaluate(tiny_model("electra"), "lora", letters, seed=7)
    assert not again.cache_hit and api.load_classifier(again.artifact).predict_proba(letters.texts[:2]).shape == (2, 3)


def test_an_explicit_target_choice_wins_and_is_checked(tiny_model, letters, matrix):
    from engine.errors import ClinBenchError

    res = evaluate(tiny_model("distilbert"), "lora", letters, target_modules=["q_lin"])
    assert (res.manifest["training"]["target_modules"], res.manifest["training"]["lora_layers"]) == (["q_lin"], 2)
    with pytest.raises(ClinBenchError, match="'query' not found"):
        evaluate(tiny_model("distilbert"), "lora", letters, target_modules=["query"])


def test_a_name_used_outside_the_blocks_is_matched_inside_them_only():
    """MPNet's blocks use `dense`, a name its pooler uses too, and peft has no default for it: the targets are then a
    pattern over the blocks' modules, and the pooler is left alone."""
    from peft import get_peft_model
    from transformers import MPNetConfig, MPNetForSequenceClassification

    from engine.finetune.loading import lora_config, lora_manifest
    from engine.options.groups import FineTuneOptions

    net = MPNetForSequenceClassification(
        MPNetConfig(vocab_size=50, hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=32)
    )
    tuned = get_peft_model(net, lora_config(net, FineTuneOptions(), "SEQ_CLS", ["classifier"]))
    adapted = [n for n, m in tuned.named_modules() if hasattr(m, "lora_A") and ".layer." not in n]
    assert adapted == [], adapted  # nothing outside the blocks: not the pooler, not classifier.dense
    record = lora_manifest(tuned)
    assert record["target_modules"] == ["dense", "k", "o", "q", "v"] and record["lora_layers"] == 2 * 6


def test_last_token_pooling_reads_each_letters_last_token_whatever_the_padding_side(tiny_model, letters, matrix):
    """Qwen2's tokenizer pads on the left: letters of different lengths embedded together get the vectors each gets alone."""
    from engine.features import extract
    from engine.models import catalog

    loaded = catalog.load(str(tiny_model("qwen2")))
    assert loaded.tokenizer.padding_side == "left"
    texts = [letters.texts[0][:80], letters.texts[1], letters.texts[2][:300]]
    together, _ = extract.embed(loaded, texts, pooling="last", max_length=64, use_cache=False)
    alone = np.vstack([extract.embed(loaded, [t], pooling="last", max_length=64, use_cache=False)[0] for t in texts])
    assert np.allclose(together, alone, atol=1e-5)


@pytest.mark.parametrize("arch", ["mistral", "gemma2"])
def test_label_scores_past_a_sliding_window_equal_a_full_forward(arch, tiny_model, letters, matrix):
    """The tiny Mistral and Gemma-2 attend within 16 tokens; prompts are 64. Label scores on the prompt's kept KV cache
    (cropped back after each label) equal scoring each prompt + label from scratch."""
    import torch

    from engine.methods.prompting import Scorer, load_lm

    lm = load_lm(str(tiny_model(arch)))
    assert lm.net.config.sliding_window == 16
    scorer = Scorer(lm, letters.classes, None, None, 64)
    got = scorer.token_logprobs(letters.texts[:2])
    budget = scorer.letter_budget()
    for i, text in enumerate(letters.texts[:2]):
        prompt = scorer.special + scorer.prompt_ids(text, budget)
        assert len(prompt) > 16
        for j, label in enumerate(scorer.label_ids):
            with torch.inference_mode():
                lp = torch.log_softmax(lm.net(input_ids=torch.tensor([prompt + label])).logits[0].float(), -1)
            want = sum(float(lp[len(prompt) - 1 + k, t]) for k, t in enumerate(label))
            assert got[i, j] == pytest.approx(want, abs=1e-4)


def test_gradient_checkpointing_recomputes_the_blocks_and_trains_the_same_weights(tiny_model, letters, matrix):
    """With the option on, every block runs again in the backward pass, and the trained weights are the same to the bit
    (the recomputation replays the same dropout masks): so the option stays out of cache keys."""
    import torch

    from engine.features import extract
    from engine.finetune import loading, loop
    from engine.models.devices import choose
    from engine.options.groups import FineTuneOptions

    folder = str(tiny_model("llama"))  # (built before seeding: building draws random weights)

    def train(checkpointing: bool):
        loop.seed_torch(0)
        placement = choose()
        net, tok, _identity, _kind, head = loading.load_classifier_model(folder, letters.classes, placement)
        ft = FineTuneOptions(epochs=1, learning_rate=1e-3, gradient_checkpointing=checkpointing).resolved("lora")
        trained, _ = loading.prepare_trainable(net, "lora", head, ft)
        calls = []
        block = trained.get_base_model().model.layers[0]
        block.self_attn.register_forward_pre_hook(lambda *a: calls.append(1))  # (inside the checkpoint; a recomputation stops early)
        ids, _ = extract.tokenize(tok, letters.texts, 64)
        y = torch.tensor([letters.classes.index(v) for v in letters.labels])

        def loss_fn(input_ids, mask, batch):
            return torch.nn.functional.cross_entropy(trained(input_ids=input_ids, attention_mask=mask).logits.float(), y[batch])

        key = f"gc-{checkpointing}-{id(net)}"
        loop.train(
            trained, ids, np.arange(len(letters)), loss_fn, lambda: {"score": 0.0}, ft, 0, placement, pad_id=tok.pad_token_id, key=key
        )
        return {n: p.detach().clone() for n, p in trained.named_parameters() if p.requires_grad}, len(calls)

    plain, plain_calls = train(False)
    checkpointed, checkpointed_calls = train(True)
    assert checkpointed_calls == 2 * plain_calls  # each batch's block ran twice: forward, then again in backward
    assert plain.keys() == checkpointed.keys() and all(torch.equal(plain[k], checkpointed[k]) for k in plain)


def test_evaluate_prints_what_lora_adapted(tiny_model, small_csv, cache):
    from tests.conftest import evaluate_cli

    out = evaluate_cli(small_csv, tiny_model("phi3"), "--method", "lora", "--protocol", "holdout", "--max-length", "32", "--epochs", "1")
    assert out.returncode == 0, out.stderr[-1500:]
    assert "LoRA adapted down_proj, gate_up_proj, o_proj, qkv_proj (8 layers); trained in full beside it: score" in out.stdout
