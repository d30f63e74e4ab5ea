"""instruct-lora on a tiny random decoder: the loss reads the answer tokens only, training moves the label likelihood
towards the training labels, the stored classifier answers like the evaluation, cache hits, cancel and resume, cv."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from engine.cache.context import StepContext
from engine.cache.storage import evaluations_dir
from engine.errors import Cancelled, ClinBenchError
from engine.finetune import loop
from engine.finetune.loading import load_lm_model
from engine.methods import classifiers, instruct_lora, prompting, registry
from engine.methods.prompting import Scorer
from engine.models.devices import choose
from engine.options.groups import Options
from engine.runs import experiment
from tests.conftest import run_step

FAST = {"protocol": "holdout", "max_length": 32, "n_boot": 100, "epochs": 2, "learning_rate": 1e-2}


@pytest.fixture(scope="module")
def wide_decoder(tmp_path_factory, default_ds) -> Path:
    """conftest's tiny random Llama, initialised wider (0.2, not 0.02): the default init bounds every logit to about
    +-0.6, so no training can make a label word likely; with this one a few LoRA steps visibly move the label scores."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from tests.conftest import _word_tokenizer

    torch.manual_seed(0)
    tok, vocab = _word_tokenizer(default_ds.texts)
    cfg = LlamaConfig(vocab_size=vocab, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=2, max_position_embeddings=1024, initializer_range=0.2, eos_token_id=1, bos_token_id=1)  # fmt: skip
    folder = tmp_path_factory.mktemp("wide-llama")
    LlamaForCausalLM(cfg).save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


@pytest.fixture
def ds(small_csv):
    return experiment.DataSpec(str(small_csv), "letter", "specialty").load()


def _scorer(tiny_decoder, classes, max_length=40):
    net, tok, identity, _kind, config, _ = load_lm_model(str(tiny_decoder), choose("cpu", "float32"))
    lm = instruct_lora.as_lm("tiny", net.eval(), tok, identity, choose("cpu", "float32"), config)
    return Scorer(lm, classes, None, None, max_length), net


def test_only_the_answer_tokens_carry_the_loss(tiny_decoder, default_ds):
    import torch

    scorer, net = _scorer(tiny_decoder, default_ds.classes)
    rows = [0, 1, 2, 3]
    y = np.array([default_ds.classes.index(default_ds.labels[i]) for i in rows])
    ids, n_answer, n_cut = instruct_lora.sequences(scorer, [default_ds.texts[i] for i in rows], y)
    assert n_cut == 4 and all(len(x) <= 40 for x in ids)  # real letters are cut, never the answer
    for x, c, n in zip(ids, y, n_answer, strict=True):
        assert list(x[-n:]) == scorer.label_ids[c] and list(x[: len(scorer.head_ids)]) == scorer.head_ids
    lengths = np.array([len(x) for x in ids])
    input_ids, mask = loop.collate(ids, np.arange(4), 0, "cpu", multiple=64)  # right-padded to 64
    labels = instruct_lora.answer_labels(input_ids, lengths, n_answer)
    for row in range(4):
        carried = (labels[row] != -100).nonzero().flatten().tolist()
        assert carried == list(range(lengths[row] - n_answer[row], lengths[row]))  # not the prompt, the letter or the padding
        assert labels[row, carried].tolist() == scorer.label_ids[y[row]]
    with torch.no_grad():
        nll = instruct_lora.answer_nll(net, input_ids, mask, labels)
        full = torch.log_softmax(net(input_ids=input_ids, attention_mask=mask).logits.float(), -1)
    for row in range(4):  # the answer's summed NLL from a plain forward pass over every position
        expected = -sum(float(full[row, t - 1, input_ids[row, t]]) for t in range(lengths[row] - n_answer[row], lengths[row]))
        assert float(nll[row]) == pytest.approx(expected, rel=1e-4)


def _right_label_logprob(lm, ds, rows) -> float:
    """Mean log-probability (softmax over the labels' summed log-likelihoods, uncalibrated) of each letter's own label."""
    scorer = Scorer(lm, ds.classes, None, None, FAST["max_length"])
    sums = scorer.token_logprobs([ds.texts[i] for i in rows])
    y = np.array([ds.classes.index(ds.labels[i]) for i in rows])
    return float(np.mean(np.log(prompting.softmax(sums)[np.arange(len(rows)), y])))


def test_the_step_tunes_towards_the_labels_and_its_classifier_answers_like_the_evaluation(ds, cache, wide_decoder):
    res = run_step(ds, wide_decoder, "instruct-lora", **FAST)
    m, man = res.metrics, res.manifest
    assert {"accuracy", "macro_f1", "macro_f1_ci", "per_class", "train_rows", "test_rows", "baseline", "protocol"} <= set(m)
    assert man["method"] == "instruct-lora" and man["predictor"] == "tuned-lm" and man["stage"] == "tuned"
    assert (Path(res.artifact) / "adapter" / "adapter_config.json").exists() and (Path(res.artifact) / "prompt.json").exists()
    training = man["training"]
    assert training["n_fit"] + training["n_val"] == len(m["train_rows"]) and len(training["curve"]) == 2
    assert not set(training["val_index"]) & set(m["test_rows"])
    # training moved the likelihood of the fitting letters' own labels up (the base model is the zero-shot one)
    fit = sorted(set(range(len(ds))) - set(m["test_rows"]) - set(training["val_index"]))[::2]
    base = _right_label_logprob(prompting.load_lm(str(wide_decoder)), ds, fit)
    tuned = _right_label_logprob(instruct_lora.load_tuned_lm(str(wide_decoder), Path(res.artifact) / "adapter"), ds, fit)
    assert tuned > base + 0.3, (base, tuned)
    # the stored classifier, through the one interface, gives the step's test predictions
    clf = classifiers.load(res.artifact)
    stored = json.loads((Path(res.artifact) / "predictions.json").read_text())
    idx = stored["test_index"][:6]
    proba = clf.predict_proba([ds.texts[i] for i in idx])
    assert clf.classes_ == ds.classes and np.allclose(proba.sum(1), 1)
    assert np.allclose(proba, np.asarray(stored["scores"])[:6], atol=1e-5)
    assert clf.predict([ds.texts[i] for i in idx]) == stored["y_pred"][:6]
    assert clf.metadata["method"] == "instruct-lora" and clf.truncated(["short letter"]) == [False]
    assert run_step(ds, wide_decoder, "instruct-lora", **FAST).cache_hit
    assert not list(loop.checkpoint_path("x").parent.glob(f"{res.manifest['key']}*")), "checkpoints and staging removed"


def test_cancel_in_epoch_two_then_resume_from_the_checkpoint(ds, cache, tiny_decoder, monkeypatch):
    monkeypatch.setenv("CLINBENCH_DTYPE", "float32")  # mechanics only: a tiny model runs 3x faster in fp32 than in bf16 on a CPU
    opts = Options.parse({**FAST, "seed": 5})
    calls = {"n": 0}

    def stop():
        calls["n"] += 1
        return calls["n"] > 9  # fold check, 6 batches of epoch 1, its validation, then inside epoch 2

    with pytest.raises(Cancelled, match="epoch 2"):
        registry.run(ds, str(tiny_decoder), "instruct-lora", opts, StepContext(should_stop=stop))
    assert not evaluations_dir().exists() or not list(evaluations_dir().iterdir()), "no artifact for a cancelled training"
    again = StepContext()
    res = registry.run(ds, str(tiny_decoder), "instruct-lora", opts, again)
    assert res.manifest["training"]["resumed_from_epoch"] == 1 and res.manifest["training"]["epochs_run"] == 2
    assert len(again.metrics["val_macro_f1"]) == 2, "epoch 1's validation point came back from the checkpoint"


def test_under_cv_each_fold_trains_on_its_own_letters_and_a_refit_is_stored(ds, cache, tiny_decoder, monkeypatch):
    monkeypatch.setenv("CLINBENCH_DTYPE", "float32")
    res = run_step(ds, tiny_decoder, "instruct-lora", **{**FAST, "protocol": "cv", "cv_folds": 2, "epochs": 1})
    man = res.manifest
    assert man["protocol"]["n_repeats"] == 1 and len(res.metrics["folds"]) == 2  # cv_repeats defaults to 1
    assert set(man["fold_trainings"]) == {"r0f0", "r0f1"} and man["refit"] == "every letter"
    assert man["training"]["n_fit"] + man["training"]["n_val"] == len(ds)
    assert {"accuracy", "macro_f1", "macro_f1_ci", "per_class", "fold_macro_f1"} <= set(res.metrics)


def test_an_encoder_is_refused(ds, cache, tiny_encoder):
    with pytest.raises(ClinBenchError, match="encoder"):
        run_step(ds, tiny_encoder, "instruct-lora", **FAST)
