"""domain-adapt with reference answers on a tiny random decoder: the dataset's own split, answers of test letters never
learnt, written answers scored by ROUGE-L and BLEU, deterministic, cached; the scorers themselves."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from engine.data.dataset import load_dataset
from engine.finetune import generation, loading, loop
from engine.methods import registry
from engine.models.devices import choose
from engine.options.groups import Options
from tests.conftest import write_csv

OPTS = Options.parse(
    {"protocol": "fixed", "max_length": 32, "n_boot": 100, "epochs": 1, "batch_size": 8, "learning_rate": 1e-2, "generate_tokens": 6}
)


@pytest.fixture
def qa(tmp_path, default_ds) -> object:
    """40 real letters (8 per label) with a reference answer each and their own split (2 test letters per label)."""
    per: dict[str, int] = {}
    rows = []
    for t, lab in zip(default_ds.texts, default_ds.labels):
        n = per[lab] = per.get(lab, 0) + 1
        if n <= 8:
            rows.append({"letter": t, "specialty": lab, "split": "test" if n % 4 == 0 else "train", "answer": f"{lab} plan {len(rows)}"})
    return load_dataset(write_csv(tmp_path / "qa.csv", rows), "letter", "specialty", split_column="split", answer_column="answer")


def test_fixed_split_answers_of_test_letters_never_learnt_and_scores_in_range(qa, tiny_decoder, monkeypatch):
    learnt, trained = {}, {}
    answer_ids, train = generation.answer_ids, loop.train

    def spy_answers(tokenizer, texts, answers, prompt, max_length):
        learnt.update(texts=list(texts), answers=list(answers))
        return answer_ids(tokenizer, texts, answers, prompt, max_length)

    def spy_train(net, ids, fit_idx, *args, **kwargs):
        trained.update(ids=ids, fit=np.asarray(fit_idx))
        return train(net, ids, fit_idx, *args, **kwargs)

    monkeypatch.setattr(generation, "answer_ids", spy_answers)
    monkeypatch.setattr(loop, "train", spy_train)
    res = registry.run(qa, str(tiny_decoder), "domain-adapt", OPTS)
    test = [i for i, s in enumerate(qa.split) if s == "test"]
    train_rows = [i for i, s in enumerate(qa.split) if s == "train"]
    assert res.manifest["protocol"]["name"] == "fixed" and res.manifest["split"]["n_test"] == len(test) == 10
    assert set(trained["fit"]) <= set(train_rows)
    assert not {qa.texts[i] for i in test} & set(learnt["texts"]) and set(learnt["texts"]) == {qa.texts[i] for i in train_rows}
    assert not {qa.answers[i] for i in test} & set(learnt["answers"])
    for i in test:  # test letters stay plain letters in the training sequences (and are never fitted on)
        assert len(trained["ids"][i]) <= 32 and i not in trained["fit"]
    m = res.metrics
    assert m["generated_letters"] == 10 and m["answers_from"] == "answer"
    for k in ("rouge_l_before", "rouge_l_after"):
        assert 0.0 <= m[k] <= 1.0
    for k in ("bleu_before", "bleu_after"):
        assert 0.0 <= m[k] <= 100.0
    assert m["perplexity_before"] > 1 and m["perplexity_after"] > 1
    written = json.loads((Path(res.artifact) / "generated.json").read_text())
    assert [w["reference"] for w in written] == [qa.answers[i] for i in test] and {"base", "tuned", "row"} <= set(written[0])
    assert "generate_before_s" in res.manifest["timings"]

    again = registry.run(qa, str(tiny_decoder), "domain-adapt", OPTS)
    assert again.cache_hit and again.metrics["rouge_l_after"] == m["rouge_l_after"]
    capped = registry.run(qa, str(tiny_decoder), "domain-adapt", OPTS.replace(generate_letters=3))
    assert not capped.cache_hit and capped.metrics["generated_letters"] == 3


def test_generation_is_deterministic_and_keeps_the_prompt(qa, tiny_decoder):
    placement = choose()
    net, tokenizer, *_ = loading.load_lm_model(str(tiny_decoder), placement)
    prompts = generation.prompt_ids(tokenizer, qa.texts[:5], "\nAnswer:", 16)
    tail = tokenizer("\nAnswer:", add_special_tokens=False)["input_ids"]
    assert all(len(p) <= 16 and list(p[-len(tail) :]) == tail for p in prompts)
    first = generation.generate(net, tokenizer, prompts, placement, max_new_tokens=5, batch_size=2)
    assert first == generation.generate(net, tokenizer, prompts, placement, max_new_tokens=5, batch_size=2) and len(first) == 5
    seqs = generation.answer_ids(tokenizer, qa.texts[:5], qa.answers[:5], "\nAnswer:", 16)
    assert all(len(s) <= 16 and s[-1] == tokenizer.eos_token_id for s in seqs)


def test_scores_of_identical_and_disjoint_answers():
    same = generation.scores(["the tumour shrank after treatment"], ["the tumour shrank after treatment"])
    assert same["rouge_l"] == pytest.approx(1.0) and same["bleu"] == pytest.approx(100.0)
    none = generation.scores(["completely different words here"], ["the tumour shrank after treatment"])
    assert none["rouge_l"] == 0.0 and none["bleu"] < 1.0
    assert generation.first_line("\n  yes, it helps.\nQuestion: next") == "yes, it helps."
