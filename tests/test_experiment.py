"""Specs: checked (every problem named with its key), expanded into steps, executed through the step registry."""

from __future__ import annotations

import pytest

from engine.errors import ClinBenchError, SpecError
from engine.runs import experiment


@pytest.mark.parametrize(
    "obj,needle",
    [
        ([], "expected a mapping"),
        ({"models": []}, "non-empty list"),
        ({"models": ["minilm"], "methods": ["svm"]}, "unknown method 'svm'"),
        ({"models": ["minilm"], "options": {"epochs": 0}}, "epochs = 0 is out of range"),
        ({"models": ["minilm"], "options": {"target_modules": "query"}}, "expected list of names or null"),
        ({"models": ["minilm"], "data": {"path": "x.csv"}}, "data needs text_column, label_column"),
        ({"models": ["minilm"], "options": {"max_length": "long"}}, "option max_length has the wrong type"),
        ({"models": ["minilm"], "options": {"colour": 1}}, "unknown option 'colour'"),
        ({"models": ["minilm"], "extra": 1}, "unknown key"),
    ],
)
def test_bad_specs(obj, needle):
    with pytest.raises(SpecError, match=needle):
        experiment.parse_spec(obj)


def test_spec_expands_into_steps(tmp_path):
    path = tmp_path / "s.yaml"
    path.write_text("name: t\ndata: default\nmodels: [minilm, smollm2]\nmethods: [svc, logreg]\noptions: {max_length: 128}\n")
    spec = experiment.load_spec(path)
    assert [(s["model"], s["method"]) for s in spec.steps()] == [
        ("minilm", "svc"),
        ("minilm", "logreg"),
        ("smollm2", "svc"),
        ("smollm2", "logreg"),
        ("tfidf", "tfidf"),  # the reference row ends every run that classifies
    ]
    assert spec.options.embedding.max_length == 128 and spec.options.classifier.smote is True
    assert spec.to_dict()["options"]["max_length"] == 128  # flat, as in the file
    assert spec.steps(reference=False)[0]["title"] == "minilm · frozen embeddings → SVC"


def test_stored_spec_of_an_earlier_version_still_parses():
    # a run submitted before inner_folds, k_neighbors and mlm_probability existed: missing options take their defaults
    old = {"name": "t", "data": {"path": "x.csv", "text_column": "text", "label_column": "label", "label_sep": None},
           "models": ["minilm"], "methods": ["svc"], "options": {"pooling": "mean", "max_length": 512, "smote": True, "class_weight": None,
           "grid": True, "seed": 0, "test_size": 0.2, "cv_repeats": 0, "n_boot": 1000, "batch_tokens": None, "epochs": None,
           "learning_rate": None, "warmup_ratio": 0.1, "batch_size": 8, "grad_accum": 1, "weight_decay": 0.0, "lora_r": 8,
           "lora_alpha": 16, "lora_dropout": 0.1, "target_modules": None, "class_weighted_loss": True, "patience": 2, "val_size": 0.15}}  # fmt: skip
    spec = experiment.parse_stored_spec(old, "run 1")
    assert spec.options.classifier.inner_folds == 3 and spec.options.domain.mlm_probability == 0.15
    assert spec.options.protocol.cv_repeats is None, "cv_repeats: 0 (extra CV off) became the method's default"


def test_execute_refuses_a_method_it_does_not_know():
    spec = experiment.parse_spec({"models": ["minilm"], "methods": ["svc"]})
    with pytest.raises(ClinBenchError, match="cannot run in this version"):
        experiment.execute(spec, {"model": "minilm", "method": "forest"})
