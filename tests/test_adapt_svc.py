"""adapt-svc: domain adaptation (masked LM) inside each fold on that fold's training letters only, then the SVC on the
adapted vectors; the stored classifier embeds new letters with its own adapter and predicts what the step scored."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

import engine.methods.adapt_svc as adapted_svc
from engine.cache import artifacts
from engine.methods import classifiers
from engine.runs import experiment
from tests.conftest import ROOT, SHARED_DATA, cli, run_step
from tests.test_multilabel import multi_label_ds

FAST = {"max_length": 32, "n_boot": 100, "epochs": 1, "batch_size": 8, "learning_rate": 1e-2, "grid": False}


@pytest.fixture(scope="module")
def mlm_encoder(tiny_encoder, tmp_path_factory) -> Path:
    """The session's tiny BERT with a [MASK] token (masked-LM adaptation needs one), saved without its LM head, as sentence
    encoders such as MiniLM are: the adaptation trains a new head beside the adapters, and only the adapters embed."""
    from transformers import AutoTokenizer, BertForMaskedLM

    tok = AutoTokenizer.from_pretrained(tiny_encoder)
    tok.add_special_tokens({"mask_token": "[MASK]"})
    net = BertForMaskedLM.from_pretrained(tiny_encoder)
    net.resize_token_embeddings(len(tok))
    folder = tmp_path_factory.mktemp("tiny-mlm-bert")
    net.bert.save_pretrained(folder)  # the encoder alone (BertModel)
    tok.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def ml_ds(default_ds):
    return multi_label_ds(default_ds)


def run_recording(ds, model, **options):
    """(the adapt-svc step's result, the letters each adaptation read, in the order they were trained)."""
    seen: list[set[str]] = []
    real = adapted_svc.train_lm_adapter

    def spy(net, kind, tokenizer, train_ids, fit_idx, val_idx, *args, **kwargs):
        seen.append({ds.texts[i] for i in np.concatenate([fit_idx, val_idx])})
        return real(net, kind, tokenizer, train_ids, fit_idx, val_idx, *args, **kwargs)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(adapted_svc, "train_lm_adapter", spy)
        return run_step(ds, model, "adapt-svc", **options, **FAST), seen


@pytest.fixture(scope="module")
def adapt_cv(ml_ds, mlm_encoder):
    """adapt-svc under 3-fold cv, with every adaptation's training letters recorded."""
    return run_recording(ml_ds, mlm_encoder, protocol="cv", cv_folds=3, cv_repeats=1)


def _predictions(res) -> dict:
    return json.loads((Path(res.artifact) / "predictions.json").read_text())


def test_each_fold_adapts_on_its_training_letters_only(adapt_cv, ml_ds):
    res, seen = adapt_cv
    assert res.metrics["task"] == "multi-label" and len(res.metrics["fold_micro_f1"]) == 3
    assert len(seen) == 4  # every letter (the stored classifier) and one per fold
    pred = _predictions(res)
    test_letters = [ml_ds.texts[i] for i in pred["test_index"]]
    assert seen[0] == set(ml_ds.texts)  # the stored classifier's model is adapted to every letter
    for f, letters in enumerate(seen[1:]):  # a fold's adaptation read none of that fold's test letters
        tested = {t for t, k in zip(test_letters, pred["fold"], strict=True) if k == f}
        assert tested and tested.isdisjoint(letters) and letters | tested == set(ml_ds.texts)


def test_manifest_records_the_adaptations_and_keeps_each_adapter(adapt_cv, ml_ds):
    res, _ = adapt_cv
    manifest = artifacts.read_manifest(res.artifact)
    a = manifest["adaptation"]
    assert a["objective"] == "masked LM" and sorted(a["fold_trainings"]) == ["r0f0", "r0f1", "r0f2"]
    assert a["training"]["n_fit"] > 0 and a["training"]["n_val"] > 0
    assert a["training"]["training"]["head_modules"], "the checkpoint has no LM head: one was trained beside the adapters"
    assert list(manifest["decision"]["thresholds"]) == ml_ds.classes
    files = manifest["files"]
    assert any(f.startswith("adapter/") for f in files)
    assert all(any(f.startswith(f"folds/{tag}/adapter/") for f in files) for tag in ("r0f0", "r0f1", "r0f2"))


def test_stored_classifier_embeds_with_its_adapter(adapt_cv, ml_ds, mlm_encoder):
    res, _ = adapt_cv
    clf = classifiers.load(res.artifact)
    assert clf.thresholds is not None
    texts = ml_ds.texts[:12]
    predicted = clf.predict(texts)
    assert all(isinstance(p, tuple) for p in predicted)
    proba = clf.predict_proba(texts)
    # the adapted model's vectors differ from the base model's: an unadapted svc on the same letters scores otherwise
    base = run_step(ml_ds, mlm_encoder, "svc", protocol="cv", cv_folds=3, cv_repeats=1, **FAST)
    assert not np.allclose(classifiers.load(base.artifact).predict_proba(texts), proba)
    assert _predictions(base)["test_index"] == _predictions(res)["test_index"]  # the same folds: a paired comparison


def test_rerun_is_a_cache_hit_without_training(adapt_cv, ml_ds, mlm_encoder, monkeypatch):
    res, _ = adapt_cv

    def refuse(*a, **k):
        raise AssertionError("trained again")

    monkeypatch.setattr(adapted_svc, "train_lm_adapter", refuse)
    again = run_step(ml_ds, mlm_encoder, "adapt-svc", protocol="cv", cv_folds=3, cv_repeats=1, **FAST)
    assert again.cache_hit and again.artifact == res.artifact and again.metrics == res.metrics


def test_holdout_on_single_label_letters(default_ds, mlm_encoder):
    res, seen = run_recording(default_ds, mlm_encoder, protocol="holdout", test_size=0.3)
    assert res.metrics["protocol"] == "holdout" and 0 <= res.metrics["macro_f1"] <= 1
    manifest = artifacts.read_manifest(res.artifact)
    assert manifest["adaptation"]["fold_trainings"] == {} and manifest["refit"] == "training split"
    assert len(seen) == 1  # one adaptation, on the training split: it read none of the test letters
    tested = {default_ds.texts[i] for i in _predictions(res)["test_index"]}
    assert tested and tested.isdisjoint(seen[0])


def test_the_shipped_adaptation_study_spec_checks():
    spec = experiment.load_spec(Path(__file__).resolve().parents[1] / "examples" / "hoc-adaptation.yaml")
    assert set(spec.methods) >= {"svc", "adapt-svc"} and spec.models == ["minilm"]
    assert spec.options.protocol.protocol == "cv"


def _study_letters(path: Path, default_ds) -> Path:
    """Letters for the example spec: 100 abstracts of the shared Hallmarks of Cancer corpus (with enough of its rarest
    hallmark for two folds) when it is there, else the synthetic multi-label letters."""
    hoc = SHARED_DATA / "hallmarks_of_cancer.jsonl"
    if hoc.exists():
        rows = [json.loads(line) for line in hoc.read_text(encoding="utf-8").splitlines() if line.strip()]
        counts: dict[str, int] = {}
        kept = []
        for r in rows:  # the first 90, then whatever a hallmark with fewer than 4 still needs
            if len(kept) < 90 or any(counts.get(lab, 0) < 4 for lab in r["labels"]):
                kept.append(r)
                for lab in r["labels"]:
                    counts[lab] = counts.get(lab, 0) + 1
        lines = [json.dumps({"text": r["text"], "labels": r["labels"]}) for r in kept]
    else:
        ds = multi_label_ds(default_ds)
        lines = [json.dumps({"text": t, "labels": list(labs)}) for t, labs in zip(ds.texts, ds.labels, strict=True)]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


@pytest.mark.slow
def test_the_example_spec_runs_the_adaptation_study_end_to_end(tmp_path, default_ds):
    """examples/hoc-adaptation.yaml through `python -m engine run` (a worker process), on fewer letters, two folds, short
    letters and one epoch: svc, adapt-svc and the tf-idf reference finish on the same folds with the multi-label figures."""
    import yaml

    spec = yaml.safe_load((ROOT / "examples" / "hoc-adaptation.yaml").read_text())
    spec["data"]["path"] = str(_study_letters(tmp_path / "letters.jsonl", default_ds))
    spec["options"] |= {"cv_folds": 2, "max_length": 32, "epochs": 1, "learning_rate": 1e-3, "n_boot": 100, "grid": False}
    (tmp_path / "study.yaml").write_text(yaml.safe_dump(spec))
    out = cli("run", str(tmp_path / "study.yaml"), "--json", str(tmp_path / "r.json"), timeout=900)
    assert out.returncode == 0, out.stderr[-2000:]
    results = json.loads((tmp_path / "r.json").read_text())
    assert [(r["model"], r["method"]) for r in results] == [("minilm", "svc"), ("minilm", "adapt-svc"), ("tfidf", "tfidf")]
    assert all(r["task"] == "multi-label" and 0 <= r["micro_f1"] <= 1 and r["protocol"] == "cv" for r in results)
    assert results[0]["folds"] == results[1]["folds"], "the adapted and the unadapted model are scored on the same folds"
