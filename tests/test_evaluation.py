"""Evaluations under a plan, end to end: cv and holdout figures, the output contract scripts read, the refit
classifier, the tf-idf reference, bit-identical fine-tuning in fresh processes, the domain-adaptation leakage guard."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from engine.data import dataset
from engine.errors import DataError
from engine.methods import classifiers
from engine.options.groups import ProtocolOptions
from engine.protocols import plans
from engine.runs import jobs
from engine.runs.experiment import parse_spec
from tests.conftest import evaluate_cli, run_step, write_csv


def _json(path):
    return json.loads(path.read_text())


def _check_cv_contract(out: dict, n_rows: int, n_repeats: int) -> None:
    assert out["protocol"] == "cv" and out["n_letters"] == n_rows
    lo, hi = out["macro_f1_ci"]
    assert lo <= out["macro_f1"] <= hi
    assert len(out["fold_macro_f1"]) == len(out["folds"]) == 5 * n_repeats
    for r in range(n_repeats):
        rows = sorted(i for f in out["folds"] if f["repeat"] == r for i in f["test_rows"])
        assert rows == list(range(n_rows)), "every input row in exactly one test fold per repeat"
    assert "test_rows" not in out and set(out["per_class"]) == set(out["classes"])


def test_cv_svc_contract_refit_and_classifier(cache, small_csv, tiny_encoder, tmp_path):
    out = tmp_path / "svc.json"
    r = evaluate_cli(small_csv, tiny_encoder, "--method", "svc", "--protocol", "cv", "--json", str(out))
    assert r.returncode == 0, r.stderr
    assert "protocol: 5-fold cross-validation x 2 repeats" in r.stdout and "n=60" in r.stdout
    res = _json(out)
    _check_cv_contract(res, 60, 2)
    manifest = _json(Path(res["artifact"]) / "manifest.json")
    assert manifest["refit"] == "every letter" and manifest["protocol"]["n_repeats"] == 2
    assert {"git_commit", "cpu"} <= set(manifest["environment"]) and {"tokenizers", "scipy"} <= set(manifest["versions"])
    preds = _json(Path(res["artifact"]) / "predictions.json")
    assert len(preds["test_index"]) == 120 and set(preds["repeat"]) == {0, 1}
    clf = classifiers.load(res["artifact"])
    assert clf.classes_ == res["classes"] and clf.predict_proba(["chest pain and dyspnoea"]).shape == (1, len(res["classes"]))


def test_holdout_contract_and_tfidf_reference(cache, small_csv, tmp_path):
    out = tmp_path / "tfidf.json"
    r = evaluate_cli(small_csv, "tfidf", "--protocol", "holdout", "--json", str(out))
    assert r.returncode == 0, r.stderr
    res = _json(out)
    assert res["method"] == "tfidf" and res["protocol"] == "holdout" and "folds" not in res
    assert sorted(res["train_rows"] + res["test_rows"]) == list(range(60)) and len(res["test_rows"]) == 12
    assert res["macro_f1"] > res["baseline"]["macro_f1"], "bag-of-words beats the majority class on real letters"
    clf = classifiers.load(res["artifact"])
    assert clf.predict(["The patient underwent colonoscopy for rectal bleeding."])[0] in res["classes"]


def test_a_run_starts_with_the_reference_and_refuses_an_unscorable_class(cache, tmp_path, small_csv):
    spec = parse_spec({"models": ["minilm"], "methods": ["svc", "lora"]})
    assert [(s["model"], s["method"]) for s in spec.steps()] == [("minilm", "svc"), ("minilm", "lora"), ("tfidf", "tfidf")]
    ds = dataset.load_dataset(small_csv, "letter", "specialty")
    rows = [{"text": t, "label": lab} for t, lab in zip(ds.texts, ds.labels, strict=True)]
    rows += [{"text": "a rare letter about gout", "label": "rheumatology"}, {"text": "another one, on lupus", "label": "rheumatology"}]
    csv = write_csv(tmp_path / "rare.csv", rows)
    bad = parse_spec({"models": ["minilm"], "methods": ["svc"], "data": {"path": str(csv), "text_column": "text", "label_column": "label"}})
    with pytest.raises(DataError, match=r"'rheumatology' \(2 letters\).*fewer folds"):
        jobs.submit(bad, start_worker=False)
    assert jobs.list_runs() == [], "nothing is queued"


def test_every_class_counts_in_macro_f1(cache, small_csv, tiny_encoder):
    ds = dataset.load_dataset(small_csv, "letter", "specialty")
    res = run_step(ds, tiny_encoder, "logreg", protocol="cv", cv_repeats=1, max_length=32)
    per_class = res.metrics["per_class"]
    assert set(per_class) == set(ds.classes)
    assert res.metrics["macro_f1"] == pytest.approx(np.mean([v["f1"] for v in per_class.values()]))


def test_lora_cv_is_bit_identical_in_fresh_processes_and_lora_svc_uses_the_fold_adapters(tmp_path, small_csv, tiny_encoder):
    outs = []
    for i in (1, 2):
        out = tmp_path / f"lora{i}.json"
        r = evaluate_cli(
            small_csv, tiny_encoder, "--method", "lora", "--protocol", "cv", "--seed", "3", "--max-length", "32", "--epochs", "1",
            "--json", str(out), env_extra={"CLINBENCH_CACHE": str(tmp_path / f"cache{i}")},
        )  # fmt: skip
        assert r.returncode == 0, r.stderr
        outs.append(_json(out))
    a, b = outs
    _check_cv_contract(a, 60, 1)
    assert a["macro_f1"] == b["macro_f1"] and a["fold_macro_f1"] == b["fold_macro_f1"]
    assert Path(a["artifact"]).name == Path(b["artifact"]).name, "the same cache key in another process and cache"
    pa, pb = (_json(Path(o["artifact"]) / "predictions.json") for o in outs)
    assert pa["scores"] == pb["scores"], "identical probabilities, not just labels"
    ma = _json(Path(a["artifact"]) / "manifest.json")
    assert {f"folds/r0f{k}/adapter/adapter_model.safetensors" for k in range(5)} <= set(ma["files"])
    r = evaluate_cli(
        small_csv, tiny_encoder, "--method", "lora-svc", "--protocol", "cv", "--seed", "3", "--max-length", "32", "--epochs", "1",
        "--json", str(tmp_path / "ls.json"), env_extra={"CLINBENCH_CACHE": str(tmp_path / "cache1")},
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    ls = _json(tmp_path / "ls.json")
    _check_cv_contract(ls, 60, 1)
    ml = _json(Path(ls["artifact"]) / "manifest.json")
    assert Path(ml["lora_artifact"]).name == Path(a["artifact"]).name, "lora-svc reused the lora step (same key)"


def test_a_domain_adapted_model_is_not_scored_on_letters_it_read(cache, small_csv, tiny_decoder):
    ds = dataset.load_dataset(small_csv, "letter", "specialty")
    adapted = run_step(ds, tiny_decoder, "domain-adapt", epochs=1, max_length=32).metrics["adapted_model"]
    with pytest.raises(DataError, match=r"domain-adapted on \d+ of the letters this evaluation tests.*--protocol holdout"):
        run_step(ds, adapted, "svc", protocol="cv", max_length=32)
    ok = run_step(ds, adapted, "svc", protocol="holdout", max_length=32)  # the adaptation's own test letters: never read
    assert ok.metrics["protocol"] == "holdout"
    with pytest.raises(DataError, match=r"domain-adapted on \d+ of the letters this evaluation tests"):  # nor its perplexity
        run_step(ds, adapted, "domain-adapt", seed=1, epochs=1, max_length=32)


def test_n_seeds_runs_each_step_per_seed_and_compare_shows_the_spread(cache, small_csv):
    from engine.evaluation import comparison, results
    from engine.runs import experiment

    spec = parse_spec(
        {"models": ["tfidf"], "methods": [], "options": {"n_seeds": 3, "seed": 5, "n_boot": 100},
         "data": {"path": str(small_csv), "text_column": "letter", "label_column": "specialty"}}
    )  # fmt: skip
    steps = spec.steps()
    assert [s["seed"] for s in steps] == [5, 6, 7] and all(s["method"] == "tfidf" for s in steps)
    ds = spec.data.load()
    done = [experiment.execute(spec, s, dataset=ds) for s in steps]
    assert [r.manifest["config"]["seed"] for r in done] == [5, 6, 7]
    assert len({r.artifact for r in done}) == 3, "each seed its own folds, so its own evaluation"
    evals, _ = results.list_evaluations(ds.data_hash)
    spread = comparison.seed_spread(evals)
    assert len(spread) == 1 and spread.loc[0, "n_seeds"] == 3 and spread.loc[0, "seeds"] == [5, 6, 7]
    f1 = [r.metrics["macro_f1"] for r in done]
    assert spread.loc[0, "sd_across_seeds"] == pytest.approx(np.std(f1, ddof=1))


def _conflict_csv(small_csv, tmp_path):
    """(the small dataset, a copy of its file with row 3 a copy of row 0 filed under another label, that label)."""
    ds = dataset.load_dataset(small_csv, "letter", "specialty")
    rows = [{"letter": t, "specialty": lab} for t, lab in zip(ds.texts, ds.labels, strict=True)]
    other = next(lab for lab in ds.classes if lab != ds.labels[0])
    rows.insert(3, {"letter": ds.texts[0].upper(), "specialty": other})  # row 3: a copy of row 0 filed under another label
    csv = write_csv(tmp_path / "conflict.csv", rows)
    return ds, csv, other


def test_label_conflicts_can_be_dropped_and_rows_still_name_the_input_file(cache, small_csv, tmp_path):
    _, csv, _ = _conflict_csv(small_csv, tmp_path)
    grouped, dropped = tmp_path / "g.json", tmp_path / "d.json"
    assert evaluate_cli(csv, "tfidf", "--json", str(grouped)).returncode == 0
    r = evaluate_cli(csv, "tfidf", "--label-conflicts", "drop", "--json", str(dropped))
    assert r.returncode == 0, r.stderr
    g, d = _json(grouped), _json(dropped)
    assert g["n_letters"] == 61 and d["n_letters"] == 59
    assert sorted(i for f in d["folds"] if f["repeat"] == 0 for i in f["test_rows"]) == [i for i in range(61) if i not in (0, 3)]
    for f in g["folds"]:
        assert (0 in f["test_rows"]) == (3 in f["test_rows"]), "the two copies stay on one side of every fold"


def test_label_conflicts_merge_makes_one_multi_label_letter_of_each_set_of_copies(cache, small_csv, tmp_path):
    ds, csv, other = _conflict_csv(small_csv, tmp_path)
    merged = plans.prepare(dataset.load_dataset(csv, "letter", "specialty"), ProtocolOptions(label_conflicts="merge"))
    assert merged.multi_label and len(merged) == 60 and merged.rows[:4] == [0, 1, 2, 4]
    assert merged.labels[0] == tuple(sorted({ds.labels[0], other}))
    assert all(labs == (lab,) for labs, lab in zip(merged.labels[1:], ds.labels[1:], strict=True))
    out = tmp_path / "m.json"
    r = evaluate_cli(csv, "tfidf", "--label-conflicts", "merge", "--json", str(out))
    assert r.returncode == 0, r.stderr
    m = _json(out)
    assert m["task"] == "multi-label" and m["n_letters"] == 60 and "micro_f1" in m
    refused = evaluate_cli(csv, "minilm", "--method", "setfit", "--label-conflicts", "merge")
    assert refused.returncode != 0 and "multi-label" in refused.stderr.lower()
