"""Fine-tuning mechanics on tiny random models: what trains, what is saved, splits, cancel and resume."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from engine.cache import artifacts
from engine.cache.context import StepContext
from engine.cache.storage import evaluations_dir
from engine.data.dataset import load_dataset
from engine.errors import Cancelled, ClinBenchError
from engine.features import extract
from engine.finetune import heads, loading, loop
from engine.methods import registry
from engine.models import catalog
from engine.models.devices import choose
from engine.options.groups import FineTuneOptions, Options
from engine.runs import experiment
from tests.conftest import ROOT

FAST = {"protocol": "holdout", "max_length": 32, "n_boot": 100, "epochs": 2, "batch_size": 8}  # one training per step; cv: test_evaluation
OPTS = Options.parse(FAST)


@pytest.fixture
def ds(small_csv):
    return load_dataset(small_csv, "letter", "specialty")


def _one_epoch(trained, tokenizer, ds, ctx=None):
    """Train `trained` for one short epoch with the engine's loop; returns parameters before and after."""
    import torch

    before = {n: p.detach().clone() for n, p in trained.named_parameters()}
    ids, _ = extract.tokenize(tokenizer, ds.texts, 32)
    y = torch.tensor([ds.classes.index(v) for v in ds.labels])
    ft = FineTuneOptions(epochs=1, learning_rate=1e-2, warmup_ratio=0.0, patience=1)

    def loss_fn(input_ids, mask, batch):
        return torch.nn.functional.cross_entropy(trained(input_ids=input_ids, attention_mask=mask).logits.float(), y[batch])

    loop.train(
        trained,
        ids,
        np.arange(len(ds)),
        loss_fn,
        lambda: {"val_x": 0.5, "score": 0.0},
        ft,
        0,
        choose(),
        pad_id=tokenizer.pad_token_id,
        key=f"test-{id(trained)}",
        ctx=ctx,
    )
    after = dict(trained.named_parameters())
    return before, after


def test_linear_probe_trains_only_the_head(tiny_encoder, ds):
    net, tok, _identity, kind, head = loading.load_classifier_model(str(tiny_encoder), ds.classes, choose())
    assert kind == "encoder" and "classifier" in head
    trained, targets = loading.prepare_trainable(net, "linear-probe", head, OPTS.finetune)
    assert targets is None
    before, after = _one_epoch(trained, tok, ds)
    changed = {n for n in before if not torch_equal(before[n], after[n])}
    in_head = {n for n in before if any(n.startswith(h + ".") for h in head)}
    assert changed and changed <= in_head, f"changed outside the head: {sorted(changed - in_head)}"
    assert "classifier.weight" in changed


def test_lora_trains_only_adapters_and_head(tiny_decoder, ds):
    net, tok, _identity, kind, head = loading.load_classifier_model(str(tiny_decoder), ds.classes, choose())
    assert kind == "decoder" and head == ["score"]
    assert tok.pad_token == tok.eos_token and net.config.pad_token_id == tok.pad_token_id  # the decoder had no pad token
    trained, targets = loading.prepare_trainable(net, "lora", head, OPTS.finetune)
    assert targets == ["q_proj", "v_proj"]
    before, after = _one_epoch(trained, tok, ds)
    changed = {n for n in before if not torch_equal(before[n], after[n])}
    assert changed and all("lora_" in n or "modules_to_save" in n for n in changed), sorted(changed)
    assert any("lora_B" in n for n in changed) and any("modules_to_save" in n and "score" in n for n in changed)


def torch_equal(a, b) -> bool:
    import torch

    return bool(torch.equal(a, b))


def test_default_lora_targets_by_architecture(tiny_encoder, tiny_decoder):
    from transformers import AutoModel, BioGptConfig, BioGptModel

    assert loading.default_target_modules(AutoModel.from_pretrained(tiny_encoder)) == ["query", "value"]
    assert loading.default_target_modules(AutoModel.from_pretrained(tiny_decoder)) == ["q_proj", "v_proj"]
    biogpt = BioGptModel(BioGptConfig(vocab_size=50, hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32))
    assert loading.default_target_modules(biogpt) == ["q_proj", "k_proj", "v_proj"]


def test_lora_step_saves_a_peft_adapter_that_reloads_to_identical_scores(tiny_encoder, ds):
    from peft import PeftConfig

    res = experiment.execute(
        experiment.parse_spec({"models": [str(tiny_encoder)], "methods": ["lora"], "options": FAST}),
        {"model": str(tiny_encoder), "method": "lora"},
        dataset=ds,
    )
    folder = Path(res.artifact)
    assert PeftConfig.from_pretrained(folder / "adapter").peft_type == "LORA"  # peft's own format
    manifest = artifacts.read_manifest(folder)
    assert manifest["stage"] == "tuned" and len(manifest["training"]["curve"]) >= 1
    assert {"train_loss", "val_macro_f1", "val_loss"} <= set(manifest["training"]["curve"][0])
    for key in ("macro_f1", "macro_f1_ci", "per_class", "confusion_matrix", "baseline"):
        assert key in res.metrics
    assert set(manifest["training"]["val_index"]).isdisjoint(json.loads((folder / "predictions.json").read_text())["test_index"])
    net, tok, _ = loading.load_tuned_classifier(folder)
    ids, _ = extract.tokenize(tok, ds.texts, FAST["max_length"])
    preds = json.loads((folder / "predictions.json").read_text())
    again = heads.sequence_proba(net, ids, preds["test_index"], tok.pad_token_id, choose())
    assert np.allclose(again, np.asarray(preds["scores"]), atol=1e-5)
    assert experiment.execute(
        experiment.parse_spec({"models": [str(tiny_encoder)], "methods": ["lora"], "options": FAST}),
        {"model": str(tiny_encoder), "method": "lora"},
        dataset=ds,
    ).cache_hit


def test_cancel_mid_epoch_leaves_no_adapter_and_resume_keeps_finished_epochs(tiny_encoder, ds):
    opts = OPTS.replace(epochs=3, seed=7, patience=3)
    calls = {"n": 0}

    def stop_after(n):
        def should_stop():
            calls["n"] += 1
            return calls["n"] > n

        return should_stop

    registry.run(ds, str(tiny_encoder), "svc", opts)  # the vectors cached first: the stop checks counted below are training's
    before = set(evaluations_dir().iterdir())
    with pytest.raises(Cancelled, match="cancelled in epoch 1"):
        registry.run(ds, str(tiny_encoder), "linear-probe", opts, StepContext(should_stop=stop_after(2)))
    assert set(evaluations_dir().iterdir()) == before, "no artifact folder for a cancelled training"
    # 48 fitting letters / 8 = 6 batches per epoch: stop in the middle of epoch 2, after epoch 1 was checkpointed
    calls["n"] = 0
    with pytest.raises(Cancelled, match="epoch 2"):
        registry.run(ds, str(tiny_encoder), "linear-probe", opts, StepContext(should_stop=stop_after(8)))
    assert set(evaluations_dir().iterdir()) == before and list(loop.checkpoint_path("x").parent.glob("*.pt"))
    res = registry.run(ds, str(tiny_encoder), "linear-probe", opts)
    assert res.manifest["training"]["resumed_from_epoch"] == 1 and res.manifest["training"]["epochs_run"] == 3
    assert not (Path(res.artifact) / "adapter").exists() and (Path(res.artifact) / "classifier.skops").exists()


def test_linear_probe_trains_on_the_cached_vectors_reproducibly_and_its_classifier_reproduces_the_step(
    tiny_encoder, ds, cache, monkeypatch, tmp_path
):
    """The probe reads the svc step's cached vectors (no forward pass of its own), trains the same to the bit in a fresh
    cache, and its stored classifier (an embedding classifier) gives the step's test probabilities back."""
    from engine.methods import classifiers

    opts = OPTS.replace(protocol="cv", cv_folds=2, epochs=3, seed=5)
    registry.run(ds, str(tiny_encoder), "svc", opts)
    passes = extract.FORWARD_PASSES
    res = registry.run(ds, str(tiny_encoder), "linear-probe", opts)
    assert passes == extract.FORWARD_PASSES, "the backbone ran again"
    manifest = res.manifest
    assert manifest["embeddings"]["cache_hit"] and manifest["predictor"] == "embedding-classifier"
    assert manifest["refit"] == "every letter" and set(manifest["fold_trainings"]) == {"r0f0", "r0f1"}
    preds = json.loads((Path(res.artifact) / "predictions.json").read_text())
    clf = classifiers.load(res.artifact)
    X, _ = extract.embed(str(tiny_encoder), ds.texts, max_length=FAST["max_length"])
    final_val = manifest["training"]["val_index"]
    assert clf.classes_ == ds.classes and len(final_val) > 0
    # the stored classifier is the refit on every letter: its labels for new letters come from the same vectors
    live = clf.predict([ds.texts[i] for i in preds["test_index"][:5]])
    assert live == list(np.asarray(ds.classes)[clf.estimator.predict_proba(np.asarray(X)[preds["test_index"][:5]]).argmax(1)])
    monkeypatch.setenv("CLINBENCH_CACHE", str(tmp_path / "again"))
    again = registry.run(ds, str(tiny_encoder), "linear-probe", opts)
    assert Path(again.artifact).name == Path(res.artifact).name and not again.cache_hit
    assert json.loads((Path(again.artifact) / "predictions.json").read_text()) == preds, "not bit-reproducible"
    assert again.manifest["training"]["curve"] == manifest["training"]["curve"]


def test_linear_probe_holdout_classifier_reproduces_its_test_scores(tiny_encoder, ds, cache):
    from engine.methods import classifiers

    res = registry.run(ds, str(tiny_encoder), "linear-probe", OPTS)
    preds = json.loads((Path(res.artifact) / "predictions.json").read_text())
    clf = classifiers.load(res.artifact)
    X, _ = extract.embed(str(tiny_encoder), ds.texts, max_length=FAST["max_length"])
    assert np.allclose(clf.estimator.predict_proba(np.asarray(X)[preds["test_index"]]), np.asarray(preds["scores"]), atol=1e-6)
    assert registry.run(ds, str(tiny_encoder), "linear-probe", OPTS).cache_hit


def test_domain_adaptation_makes_a_registered_feature_extractor(tiny_decoder, ds):
    res = registry.run(ds, str(tiny_decoder), "domain-adapt", OPTS.replace(epochs=1, learning_rate=1e-2))
    m = res.metrics
    assert m["perplexity_before"] > 1 and m["perplexity_after"] > 1 and m["head_from_checkpoint"]
    entry = catalog.resolve(m["adapted_model"])
    assert entry.source == "adapted" and entry in catalog.registry()
    vectors, _stats = extract.embed(m["adapted_model"], ds.texts[:5], max_length=16)
    assert vectors.shape == (5, 32)
    summary = artifacts.summary(res)
    assert summary["adapted_model"] == m["adapted_model"] and "macro_f1" not in summary


def test_masked_lm_needs_a_mask_token(tiny_encoder, ds):
    with pytest.raises(ClinBenchError, match=r"no \[MASK\] token"):
        registry.run(ds, str(tiny_encoder), "domain-adapt", OPTS)


def test_cli_evaluate_linear_probe_json_keys(tiny_encoder, small_csv, tmp_path):
    from tests.conftest import evaluate_cli

    out_json = tmp_path / "m.json"
    out = evaluate_cli(
        small_csv,
        tiny_encoder,
        "--max-length",
        "32",
        "--method",
        "linear-probe",
        "--epochs",
        "2",
        "--json",
        str(out_json),
    )
    assert out.returncode == 0, out.stderr
    m = json.loads(out_json.read_text())
    for key in ("macro_f1", "macro_f1_ci", "per_class", "confusion_matrix"):
        assert key in m
    assert "best epoch" in out.stdout and "linear head" in out.stdout
    out = evaluate_cli(
        small_csv,
        tiny_encoder,
        "--method",
        "lora",
        "--lora-r",
        "0",
    )
    assert out.returncode == 2 and "--lora-r = 0 is out of range" in out.stderr
    assert ROOT.exists()


def test_live_classification_with_fine_tuned_classifiers(tiny_encoder, ds):
    """Classify one letter with the linear-probe, LoRA and LoRA-SVC classifiers: the same label as stored for a test letter."""
    from engine.evaluation import results
    from engine.serving import predict

    spec = experiment.parse_spec({"models": [str(tiny_encoder)], "methods": ["linear-probe", "lora", "lora-svc"], "options": FAST})
    keys = {experiment.execute(spec, step, dataset=ds).manifest["key"] for step in spec.steps(reference=False)}
    evals = [e for e in results.list_evaluations()[0] if e.key in keys]
    assert {e.method for e in evals} == {"linear-probe", "lora", "lora-svc"}
    for ev in evals:
        preds = json.loads((ev.folder / "predictions.json").read_text())
        i = preds["test_index"][0]
        row = predict.classify(ds.texts[i], [ev])[0]
        assert row["error"] is None, row
        assert row["predicted"] == preds["y_pred"][0], (ev.method, row)


def test_training_logs_its_curves_through_the_context_and_resumes_them(tiny_encoder, ds):
    """train_loss every few optimiser steps, the validation metrics after each epoch; a resumed training re-emits the
    points of its finished epochs, so a new attempt's chart is whole; the manifest keeps the log."""
    logged = []
    ctx = StepContext(log_metric=lambda name, value, step: logged.append((name, step, value)))
    opts = OPTS.replace(epochs=2, patience=2, seed=3)
    res = registry.run(ds, str(tiny_encoder), "linear-probe", opts, ctx)
    losses = [(s, v) for n, s, v in logged if n == "train_loss"]
    vals = [(s, v) for n, s, v in logged if n == "val_macro_f1"]
    steps = res.manifest["training"]["steps"]
    assert len(vals) == 2 and vals[-1][0] == steps and 0 <= vals[0][1] <= 1
    assert len(losses) >= 2 and [s for s, _ in losses] == sorted(s for s, _ in losses) and losses[-1][0] == steps
    assert res.manifest["training"]["log"] == ctx.metrics == {k: [[s, v] for n, s, v in logged if n == k] for k in ctx.metrics}
    # resume: cancel in epoch 2 of another training, then run it again with a fresh context
    opts = opts.replace(seed=4)
    calls = {"n": 0}

    def stop():
        calls["n"] += 1
        return calls["n"] > 8

    with pytest.raises(Cancelled):
        registry.run(ds, str(tiny_encoder), "linear-probe", opts, StepContext(should_stop=stop))
    again = StepContext()
    res = registry.run(ds, str(tiny_encoder), "linear-probe", opts, again)
    assert res.manifest["training"]["resumed_from_epoch"] == 1
    assert len(again.metrics["val_macro_f1"]) == 2, "epoch 1's validation point came back from the checkpoint"


def test_training_keys_are_pinned(default_ds):
    """Fine-tuning cache keys for the same inputs (changed on purpose in 0.3: seeded trainings, fold plans)."""
    identity = {"name": "tiny", "source": "local", "path": "/models/tiny", "weights_sha256": "ab" * 32}
    golden = {("linear-probe", False): "1917cde79b3357b4f1b812f82764e957", ("linear-probe", True): "ff4dd0bde1b1def58ec42febbcb735d7",
              ("lora", False): "487544f4e45818c7491486585c22ee42", ("lora", True): "d9c2998d05e894f0caec01699b583342"}  # fmt: skip
    for (method, changed), key in golden.items():
        opts = Options().replace(epochs=3, lora_r=4) if changed else Options()
        assert loop.training_key(method, identity, default_ds.data_hash, opts, "bfloat16") == key, (method, changed)
