"""A generative model as the classifier (zero-shot, few-shot): the prompt, the label scores, calibration, the examples
drawn from training letters only, and the stored classifier answering through the one interface."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from engine.errors import ClinBenchError
from engine.methods import classifiers, incontext, prompting
from engine.options.groups import Options
from tests.conftest import run_step

CLASSES = ["cardiovascular-pulmonary", "gastroenterology", "neurology", "obstetrics-gynecology", "urology"]


@pytest.fixture(scope="module")
def lm(tiny_decoder):
    return prompting.load_lm(str(tiny_decoder))


def _naive(lm, ids: list[int], label: list[int]) -> float:
    """The label's summed log-likelihood from one forward pass over prompt + label, no cache."""
    import torch

    with torch.inference_mode():
        logits = lm.net(input_ids=torch.tensor([ids + label])).logits[0].float()
    lp = torch.log_softmax(logits, -1)
    return float(sum(lp[len(ids) - 1 + t, tok] for t, tok in enumerate(label)))


def test_the_template_is_filled_and_only_the_letter_is_cut(lm, default_ds):
    sc = prompting.Scorer(lm, CLASSES, "Letter: {text}\nWhich of {labels}? Answer:", None, 40)
    assert sc.words[:2] == ["cardiovascular pulmonary", "gastroenterology"]  # the label, its dashes read as spaces
    long_letter = default_ds.texts[0] + " " + default_ds.texts[1]
    budget = sc.letter_budget()
    ids = sc.prompt_ids(long_letter, budget)
    assert ids[: len(sc.head_ids)] == sc.head_ids and ids[-len(sc.tail_ids) :] == sc.tail_ids  # the question survives
    assert len(sc.special) + len(ids) + max(len(x) for x in sc.label_ids) == 40
    assert sc.truncated([long_letter, "short letter"]) == [True, False]
    assert sc.encode(" urology") == sc.label_ids[-1]
    with pytest.raises(ClinBenchError, match="the columns of the data's text template"):
        prompting.split_template("{text} {age}", ["a"])
    with pytest.raises(ClinBenchError, match="exactly once"):
        prompting.split_template("no letter here", ["a"])
    with pytest.raises(ClinBenchError, match="no room"):
        prompting.Scorer(lm, CLASSES, None, None, 12).letter_budget()


def test_sum_mean_and_norm_are_as_defined_and_calibration_subtracts_the_prior():
    sums = np.array([[-4.0, -6.0], [-2.0, -9.0]])
    n_tok, n_bytes = np.array([2.0, 3.0]), np.array([8.0, 12.0])
    assert np.allclose(prompting.combine(sums, n_tok, n_bytes, "sum"), sums)
    assert np.allclose(prompting.combine(sums, n_tok, n_bytes, "mean"), [[-2, -2], [-1, -3]])
    assert np.allclose(prompting.combine(sums, n_tok, n_bytes, "norm"), [[-0.5, -0.5], [-0.25, -0.75]])


def test_label_scores_on_the_cache_equal_a_plain_forward_pass_and_calibration_subtracts_the_prior(lm, default_ds):
    sc = prompting.Scorer(lm, CLASSES, None, {"urology": "urinary tract kidney"}, 48)
    texts = default_ds.texts[:3]
    sums = sc.token_logprobs(texts)
    budget = sc.letter_budget()
    for i, text in enumerate(texts):
        ids = sc.special + sc.prompt_ids(text, budget)
        assert np.allclose(sums[i], [_naive(lm, ids, lab) for lab in sc.label_ids], atol=1e-3)
    prefix = sc.demonstration_ids(default_ds.texts[5], 1, 6) + sc.demonstration_ids(default_ds.texts[6], 4, 6)
    with_prefix = sc.token_logprobs(texts[:2], prefix)  # one cache for both letters: cut back after each
    ids = sc.special + prefix + sc.prompt_ids(texts[1], sc.letter_budget(len(prefix)))
    assert np.allclose(with_prefix[1], [_naive(lm, ids, lab) for lab in sc.label_ids], atol=1e-3)
    prior = sc.prior()
    assert prior.shape == (len(prompting.CONTENT_FREE), len(CLASSES))
    for scoring in prompting.SCORINGS:
        raw = sc.scores(sums, scoring)
        assert np.allclose(sc.scores(sums, scoring, prior), raw - sc.scores(prior, scoring).mean(0))
    assert not np.allclose(sc.scores(sums, "sum"), sc.scores(sums, "mean"))  # the long verbalizer tells them apart


def test_examples_come_from_training_rows_only_seeded_and_label_balanced():
    labels = np.array(["a", "b", "c"] * 20)
    train = np.arange(0, 45)
    rows = incontext.draw(labels, train, ["a", "b", "c"], 3, seed=0, repeat=0, fold=1)
    assert set(rows) <= set(train) and len(rows) == 9
    assert [sorted(labels[rows[i : i + 3]]) for i in (0, 3, 6)] == [["a", "b", "c"]] * 3  # one of each label per round
    assert rows == incontext.draw(labels, train, ["a", "b", "c"], 3, seed=0, repeat=0, fold=1)
    assert rows != incontext.draw(labels, train, ["a", "b", "c"], 3, seed=0, repeat=0, fold=2)
    assert rows != incontext.draw(labels, train, ["a", "b", "c"], 3, seed=1, repeat=0, fold=1)


def test_an_option_change_changes_the_cache_key():
    base = Options()
    identity = {"name": "m", "weights_sha256": "ab"}
    for method in ("zero-shot", "few-shot"):
        key = incontext.evaluation_key(identity, method, base, "plan", "float32")
        for change in ({"scoring": "norm"}, {"calibration": False}, {"prompt_template": "{text}\nA:"}, {"max_length": 256}):
            assert incontext.evaluation_key(identity, method, base.replace(**change), "plan", "float32") != key, change
        same = incontext.evaluation_key(identity, method, base.replace(k_shot=2), "plan", "float32") == key
        assert same == (method == "zero-shot")  # zero-shot reads no examples


@pytest.mark.parametrize("method", ["zero-shot", "few-shot"])
def test_the_stored_classifier_answers_like_the_evaluation(method, cache, small_csv, tiny_decoder):
    from engine.runs import experiment

    ds = experiment.DataSpec(str(small_csv), "letter", "specialty").load()
    res = run_step(ds, tiny_decoder, method, protocol="holdout", max_length=64, n_boot=100, k_shot=1)
    m = res.metrics
    assert {"accuracy", "macro_f1", "macro_f1_ci", "per_class", "train_rows", "test_rows", "baseline"} <= set(m)
    clf = classifiers.load(res.artifact)
    stored = json.loads((Path(res.artifact) / "predictions.json").read_text())
    idx = stored["test_index"][:6]
    proba = clf.predict_proba([ds.texts[i] for i in idx])
    assert clf.classes_ == ds.classes and np.allclose(proba.sum(1), 1) and proba.shape == (6, 5)
    assert np.allclose(proba, np.asarray(stored["scores"])[:6], atol=1e-3)
    assert clf.predict([ds.texts[i] for i in idx]) == stored["y_pred"][:6]
    assert clf.metadata["method"] == method and clf.truncated(["short letter"]) == [False]
    demos = res.manifest["prompt"]["demonstrations"]
    if method == "few-shot":
        assert len(demos["rows"]) == 5 and set(demos["rows"]) <= set(m["train_rows"])
        assert sorted(demos["labels"]) == sorted(ds.classes)
        # the letters are scored after the examples and without them, each calibrated, the log-probabilities averaged
        texts, sc, st = [ds.texts[i] for i in idx], clf.scorer, clf.stored
        few = incontext.log_softmax(sc.scores(sc.token_logprobs(texts, clf.prefix), "sum", np.asarray(st["prior_sums"])))
        zero = incontext.log_softmax(sc.scores(sc.token_logprobs(texts), "sum", np.asarray(st["zero_prior_sums"])))
        assert st["with_zero_shot"] and np.allclose(np.asarray(stored["scores"])[:6], prompting.softmax((few + zero) / 2), atol=1e-3)
        assert not np.allclose(np.asarray(stored["scores"])[:6], np.exp(few), atol=1e-3)  # not the examples' prompt alone
    else:
        assert demos is None
    calibration = res.manifest["prompt"]["calibration_rows"]  # the prior: training letters only, never an example
    assert (
        len(calibration) == 5 * 5
        and set(calibration) <= set(m["train_rows"])
        and not set(calibration) & set(demos["rows"] if demos else [])
    )
    from engine.evaluation import overlap  # what it read (its examples and calibration letters) is recorded, nothing else

    read = overlap.trained_on(Path(res.artifact))
    assert read == set(overlap.hashes([ds.texts[r] for r in calibration + (demos["rows"] if demos else [])]))
    assert not read & set(overlap.hashes([ds.texts[i] for i in m["test_rows"]]))
    again = run_step(ds, tiny_decoder, method, protocol="holdout", max_length=64, n_boot=100, k_shot=1)
    assert again.cache_hit


def test_under_cv_few_shot_examples_never_include_the_fold_s_test_letters(cache, small_csv, tiny_decoder):
    from engine.runs import experiment

    ds = experiment.DataSpec(str(small_csv), "letter", "specialty").load()
    res = run_step(ds, tiny_decoder, "few-shot", protocol="cv", cv_folds=3, max_length=48, n_boot=100, k_shot=1)
    folds = res.metrics["folds"]
    assert res.manifest["protocol"]["n_repeats"] == 1  # cv_repeats defaults to 1 for prompted methods
    for fold, rows in zip(folds, res.manifest["prompt"]["demonstrations"]["fold_rows"], strict=True):
        assert not set(rows) & set(fold["test_rows"])


def test_content_free_calibration_and_none_are_options_and_each_is_its_own_evaluation(cache, small_csv, tiny_decoder):
    from engine.runs import experiment

    ds = experiment.DataSpec(str(small_csv), "letter", "specialty").load()
    common = {"protocol": "holdout", "max_length": 48, "n_boot": 100}
    runs = {
        name: run_step(ds, tiny_decoder, "zero-shot", **common, **extra)
        for name, extra in [("letters", {}), ("content-free", {"calibrate_on": "content-free"}), ("none", {"calibration": False})]
    }
    assert len({r.artifact for r in runs.values()}) == 3
    assert (
        runs["content-free"].manifest["prompt"]["calibration_rows"] == []
        and len(runs["letters"].manifest["prompt"]["calibration_rows"]) == 25
    )
    scores = {k: np.asarray(json.loads((Path(r.artifact) / "predictions.json").read_text())["scores"]) for k, r in runs.items()}
    assert not np.allclose(scores["letters"], scores["content-free"]) and not np.allclose(scores["letters"], scores["none"])
    for name, r in runs.items():  # the stored classifier carries the evaluation's prior
        idx = json.loads((Path(r.artifact) / "predictions.json").read_text())["test_index"][:4]
        assert np.allclose(classifiers.load(r.artifact).predict_proba([ds.texts[i] for i in idx]), scores[name][:4], atol=1e-3), name


def test_an_encoder_is_refused(tiny_encoder):
    with pytest.raises(ClinBenchError, match="encoder"):
        prompting.load_lm(str(tiny_encoder))


@pytest.mark.slow
def test_smollm2_zero_shot_beats_the_majority_baseline(cache, small_csv):
    from engine.runs import experiment

    ds = experiment.DataSpec(str(small_csv), "letter", "specialty").load()
    res = run_step(ds, "smollm2", "zero-shot", protocol="holdout", test_size=0.5, max_length=256, n_boot=100)
    assert res.metrics["macro_f1"] >= res.metrics["baseline"]["macro_f1"] + 0.2


def test_preview_fills_the_template_without_a_model(default_ds):
    text = prompting.preview(None, CLASSES, {"urology": "kidney"}, default_ds.texts[0], words=5)
    first = " ".join(default_ds.texts[0].split()[:5])
    assert text.startswith("Medical transcription:\n" + first + " […]")  # the shipped template, the letter cut by words
    assert "Medical specialty (cardiovascular pulmonary, " in text and "kidney" in text
    assert "' kidney'" in text and "' urology'" not in text  # the answers scored (a verbalizer replaces its label), leading space kept
    with pytest.raises(ClinBenchError, match=r"must contain \{text\}"):
        prompting.preview("no letter here", CLASSES, None, "x")


CHAT = "{% for m in messages %}<s>{{ m['role'] }}: {{ m['content'] }}</s>{% endfor %}{% if add_generation_prompt %}<s>assistant:{% endif %}"


def test_chat_template_frames_the_prompt_and_scores_the_label_as_the_assistant_s_answer(cache, tmp_path, small_csv, tiny_decoder):
    import shutil

    from transformers import AutoTokenizer

    from engine.runs import experiment

    tok = AutoTokenizer.from_pretrained(tiny_decoder)
    assert prompting.chat_frame(tok, "auto") is None  # a tokenizer without a chat template: the plain prompt
    with pytest.raises(ClinBenchError, match="has no chat template"):
        prompting.chat_frame(tok, "on")
    chatty = shutil.copytree(tiny_decoder, tmp_path / "chatty")
    tok.chat_template = CHAT
    tok.save_pretrained(chatty)
    frame = prompting.chat_frame(tok, "auto")
    assert frame == ["<s>user: ", "</s><s>assistant:"] and prompting.chat_frame(tok, "off") is None
    # the frame enters the key; without one the key is the one made before the option existed
    ident, base = {"name": "m"}, Options()
    plain = incontext.evaluation_key(ident, "zero-shot", base, "plan", "float32")
    assert incontext.evaluation_key(ident, "zero-shot", base.replace(chat_template="off"), "plan", "float32") == plain
    assert incontext.evaluation_key(ident, "zero-shot", base, "plan", "float32", frame) != plain
    lm = prompting.load_lm(str(chatty))
    framed = prompting.Scorer(lm, CLASSES, None, None, 64, frame)
    assert framed.special == [] and framed.label_ids == [framed.encode(w) for w in framed.words]  # no leading space
    assert (
        framed.prompt_ids("a letter", 8)
        == framed.encode(frame[0] + "Medical transcription:\n") + framed.encode("a letter") + framed.tail_ids
    )
    assert framed.tail_ids[-len(framed.encode(frame[1])) :] == framed.encode(frame[1])
    # end to end: auto applies it, off does not; the stored classifier answers with the same frame
    ds = experiment.DataSpec(str(small_csv), "letter", "specialty").load()
    common = {"protocol": "holdout", "max_length": 48, "n_boot": 100}
    auto, off = (run_step(ds, chatty, "zero-shot", **common, chat_template=c) for c in ("auto", "off"))
    assert auto.artifact != off.artifact and auto.manifest["prompt"]["chat"] == frame and off.manifest["prompt"]["chat"] is None
    pred = json.loads((Path(auto.artifact) / "predictions.json").read_text())
    idx = pred["test_index"][:4]
    assert np.allclose(classifiers.load(auto.artifact).predict_proba([ds.texts[i] for i in idx]), np.asarray(pred["scores"])[:4], atol=1e-3)
    assert not np.allclose(
        np.asarray(pred["scores"]), np.asarray(json.loads((Path(off.artifact) / "predictions.json").read_text())["scores"])
    )
