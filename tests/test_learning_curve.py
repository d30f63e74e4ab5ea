"""The learning curve: labels_per_class draws nested, seeded training letters per label inside the same test folds; a
spec's learning_curve runs every step at each size; Compare plots macro-F1 against training size."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from engine.evaluation import comparison, results
from engine.methods import registry
from engine.options.groups import Options, ProtocolOptions
from engine.protocols import plans
from engine.runs import experiment
from tests.conftest import ROOT


def _per_label(ds, rows) -> Counter:
    return Counter(str(ds.labels[i]) for i in rows)


@pytest.mark.parametrize("protocol", ["cv", "holdout"])
def test_sizes_are_nested_capped_per_label_and_scored_on_the_same_test_letters(default_ds, protocol):
    base = ProtocolOptions(protocol=protocol, cv_repeats=2, seed=3)
    full = plans.plan(default_ds, base, "svc")
    by_n = {n: plans.plan(default_ds, ProtocolOptions(protocol=protocol, cv_repeats=2, seed=3, labels_per_class=n), "svc")
             for n in (8, 16, 64)}  # fmt: skip
    for n, pl in by_n.items():
        assert len(pl.folds) == len(full.folds) and pl.labels_per_class == n
        for f, g in zip(pl.folds, full.folds, strict=True):
            assert np.array_equal(f.test, g.test), "every size is scored on the letters the full plan scores"
            assert set(f.train) <= set(g.train) and not set(f.train) & set(f.test)
            assert set(_per_label(default_ds, f.train).values()) == {n}, "n of each label (120 letters each here)"
        assert set(pl.final_train) <= set(full.final_train) and set(_per_label(default_ds, pl.final_train).values()) == {n}
        assert pl.hash != full.hash and pl.manifest()["labels_per_class"] == n and pl.train_per_label == n
    for small, big in ((8, 16), (16, 64)):
        for a, b in zip(by_n[small].folds, by_n[big].folds, strict=True):
            assert set(a.train) < set(b.train), f"the {small} letters per label are among the {big}"
        assert set(by_n[small].final_train) < set(by_n[big].final_train)
    assert full.labels_per_class is None and np.array_equal(
        full.final_train, np.arange(len(default_ds)) if protocol == "cv" else full.folds[0].train
    )
    assert full.train_per_label == pytest.approx(np.mean([len(f.train) for f in full.folds]) / 5)


def test_a_label_with_fewer_letters_keeps_them_all_and_the_draw_follows_the_seed():
    labels = np.array(["a"] * 30 + ["b"] * 30 + ["c"] * 5)
    train = np.arange(0, 65, 1)
    drawn = plans.subsample(labels, train, 8, seed=1, repeat=0, fold=2)
    assert Counter(labels[drawn].tolist()) == {"a": 8, "b": 8, "c": 5}
    assert np.array_equal(drawn, plans.subsample(labels, train, 8, seed=1, repeat=0, fold=2)), "reproducible"
    assert not np.array_equal(drawn, plans.subsample(labels, train, 8, seed=2, repeat=0, fold=2)), "another seed"
    assert not np.array_equal(drawn, plans.subsample(labels, train, 8, seed=1, repeat=0, fold=3)), "another fold"
    assert np.array_equal(plans.subsample(labels, train, None, seed=1), train)
    assert set(drawn) < set(plans.subsample(labels, train, 9, seed=1, repeat=0, fold=2))


def test_subsampling_keeps_duplicate_groups_off_the_test_side(tmp_path):
    from tests.test_protocols import _ds, _letters

    ds = _ds(tmp_path, _letters({"a": 30, "b": 30}, dup_of={i: i - 1 for i in range(1, 60, 3)}))
    for proto in ("cv", "holdout"):
        pl = plans.plan(ds, ProtocolOptions(protocol=proto, labels_per_class=4))
        for f in pl.folds:
            assert not set(pl.groups[f.train]) & set(pl.groups[f.test])
            fit, val = plans.carve(ds, f.train, pl.groups, 0.5, 0)  # fine-tuning's validation carve of the few letters
            assert sorted([*fit, *val]) == sorted(f.train) and not set(pl.groups[fit]) & set(pl.groups[val])


def test_the_spec_runs_every_training_method_at_each_size_besides_all():
    spec = experiment.parse_spec(
        {"models": ["minilm"], "methods": ["svc", "zero-shot", "domain-adapt"], "options": {"learning_curve": [16, 8]}}
    )
    got = [(s["model"], s["method"], s.get("labels_per_class")) for s in spec.steps()]
    assert got == [
        ("minilm", "svc", 8),
        ("minilm", "svc", 16),
        ("minilm", "svc", None),
        ("minilm", "zero-shot", None),  # reads no training letter: one step
        ("minilm", "domain-adapt", None),  # makes a model, not a classifier
        ("tfidf", "tfidf", 8),
        ("tfidf", "tfidf", 16),
        ("tfidf", "tfidf", None),
    ]
    assert spec.steps()[1]["title"] == "minilm · frozen embeddings → SVC · 16 per label"
    seeded = experiment.parse_spec({"models": ["minilm"], "methods": ["svc"], "options": {"learning_curve": [8], "n_seeds": 2}})
    assert [(s["seed"], s.get("labels_per_class")) for s in seeded.steps(reference=False)] == [(0, 8), (0, None), (1, 8), (1, None)]
    assert experiment.parse_spec({"models": ["minilm"], "methods": ["svc"]}).steps(reference=False) == [
        {"model": "minilm", "method": "svc", "title": "minilm · frozen embeddings → SVC"}
    ]


def test_every_method_that_trains_reads_labels_per_class_and_its_key_changes_with_the_size(default_ds):
    from tests.test_options import _artifact_key

    for kind in registry.KINDS.values():
        if kind.name in ("zero-shot", "domain-adapt"):
            assert "labels_per_class" not in kind.reads
            continue
        assert "labels_per_class" in kind.reads, kind.name
        keys = {_artifact_key(kind.name, Options().replace(labels_per_class=n), default_ds) for n in (None, 8, 16)}
        assert len(keys) == 3, kind.name


@pytest.fixture
def curve(cache, small_csv, tiny_encoder):
    """svc (tiny encoder) and the tf-idf reference at 3 and 6 letters per label and at all (8 under 3-fold cv) on 60
    letters, every step executed as a run's worker executes it."""
    spec = experiment.parse_spec(
        {"models": [str(tiny_encoder)], "methods": ["svc"],
         "options": {"learning_curve": [3, 6], "max_length": 64, "grid": False, "n_boot": 100, "protocol": "cv", "cv_folds": 3,
                     "cv_repeats": 1},
         "data": {"path": str(small_csv), "text_column": "letter", "label_column": "specialty"}}
    )  # fmt: skip
    ds = spec.data.load()
    return ds, [experiment.execute(spec, s, dataset=ds) for s in spec.steps()]


def test_a_learning_curve_end_to_end_gives_three_points_per_method(curve):
    from ui import charts, compare

    ds, done = curve
    assert len({r.artifact for r in done}) == 6, "each size its own evaluation"
    sizes = [r.manifest["protocol"]["labels_per_class"] for r in done]
    assert sizes == [3, 6, None, 3, 6, None] and [r.manifest["config"]["labels_per_class"] for r in done] == sizes
    for r in done:
        n = r.manifest["protocol"]["labels_per_class"]
        assert r.metrics["n_scored"] == len(ds), "every size scores every letter"
        assert r.manifest["protocol"]["n_final_train"] == (len(ds) if n is None else n * len(ds.classes)), "the stored classifier too"
    assert len({tuple(f["test_rows"]) for r in done for f in r.metrics["folds"][:1]}) == 1, "the same test folds"

    evals, _ = results.list_evaluations(ds.data_hash)
    comp = results.comparison_table(evals)
    assert len(comp) == 6 and comp["evaluation"].nunique() == 6, "sizes are not merged"
    assert sorted(comp["labels_per_class"].fillna(0).astype(int)) == [0, 0, 3, 3, 6, 6]
    assert any("3 per label" in label for label in comp["evaluation"])
    assert compare.has_learning_curve(comp) and not compare.has_learning_curve(comp[comp["labels_per_class"].isna()])
    points = compare.learning_curve_points(comp)
    assert points.groupby("line").size().to_dict() == {f"{done[0].model} · svc": 3, "tfidf · tfidf (reference)": 3}
    for _, part in points.groupby("line"):
        assert list(part["size"].fillna(0)) == [3, 6, 0] and list(part["x"])[:2] == [3.0, 6.0]
        assert list(part["x"])[2] == pytest.approx(len(ds) * 2 / 3 / len(ds.classes)), "all: at the mean letters per label"
        assert (part["ci_low"] <= part["macro_f1"]).all() and (part["macro_f1"] <= part["ci_high"]).all()
    fig = charts.learning_curve_chart(points, compare.CURVE_TITLE)
    assert len(fig.data) == 2 and all(len(t.x) == 3 for t in fig.data)
    assert list(fig.layout.xaxis.ticktext) == ["3", "6", "all (≈8)"]
    assert "Training letters per label (limit)" in compare.settings_table(comp)
    from ui import report

    assert "learning curve" in report.figures(evals, confusion_for=[])  # the Export page's report bundles it

    from streamlit.testing.v1 import AppTest  # the page draws it (and leaves it out with one size: has_learning_curve above)

    at = AppTest.from_file(str(ROOT / "pages" / "5_Compare.py"), default_timeout=180).run()
    assert not at.exception, at.exception
    assert "Learning curve" in [h.value for h in at.subheader]


def test_seed_spread_keeps_sizes_apart(cache, small_csv):
    spec = experiment.parse_spec(
        {"models": ["tfidf"], "methods": [], "options": {"learning_curve": [4], "n_seeds": 2, "n_boot": 100, "protocol": "holdout", "test_size": 0.5},
         "data": {"path": str(small_csv), "text_column": "letter", "label_column": "specialty"}}
    )  # fmt: skip
    ds = spec.data.load()
    for s in spec.steps():
        experiment.execute(spec, s, dataset=ds)
    evals, _ = results.list_evaluations(ds.data_hash)
    spread = comparison.seed_spread(evals)
    assert len(spread) == 2 and sorted(spread["labels_per_class"].fillna(0)) == [0, 4] and set(spread["n_seeds"]) == {2}


def test_evaluate_on_the_command_line_prints_and_writes_the_curve(cache, small_csv, tmp_path, capsys):
    from engine.cli.parser import main

    out = tmp_path / "curve.json"
    argv = ["evaluate", "--data", str(small_csv), "--text-column", "letter", "--label-column", "specialty", "--model", "tfidf"]
    assert (
        main([*argv, "--method", "tfidf", "--learning-curve", "4,8", "--protocol", "holdout", "--n-boot", "100", "--json", str(out)]) == 0
    )
    printed = capsys.readouterr().out
    assert "learning curve (letters per label" in printed and "4 per label" in printed and "seeds" not in printed
    m = __import__("json").loads(out.read_text())
    assert [p["labels_per_class"] for p in m["learning_curve"]] == [4, 8, None]
    assert m["macro_f1"] == m["learning_curve"][-1]["macro_f1"]  # the headline figure is the run's own size (all letters)


def test_a_multi_label_comparison_draws_its_headline_across_sizes_and_seeds(cache, default_ds, tmp_path):
    """Label sets: the learning curve and the spread across seeds follow the chosen headline (here micro-F1)."""
    import pandas as pd

    from engine.runs.experiment import parse_spec
    from tests.test_multilabel import multi_label_ds
    from tests.test_multilabel_ui import write_jsonl
    from ui import report

    path = write_jsonl(tmp_path / "multi.jsonl", multi_label_ds(default_ds))
    spec = parse_spec(
        {"models": ["tfidf"], "methods": [], "options": {"n_seeds": 2, "learning_curve": [4], "protocol": "holdout", "n_boot": 100},
         "data": {"path": str(path), "text_column": "text", "label_column": "labels"}}
    )  # fmt: skip
    ds = spec.data.load()
    done = [experiment.execute(spec, s, dataset=ds) for s in spec.steps()]
    assert len(done) == 4 and all(r.metrics["task"] == "multi-label" for r in done)
    evals, _ = results.list_evaluations(ds.data_hash)
    comp = results.comparison_table(evals)
    fig = report.learning_curve_figure(comp, "micro_f1")
    (line,) = fig.data
    by_size = {}
    for r in done:
        by_size.setdefault(r.manifest["protocol"]["labels_per_class"], []).append(r.metrics["micro_f1"])
    assert list(line.y) == pytest.approx([np.mean(by_size[4]), np.mean(by_size[None])])
    assert fig.layout.yaxis.title.text.startswith("Micro-F1") and "Micro-F1" in fig.layout.title.text
    spread = comparison.seed_spread(evals, "micro_f1").set_index("labels_per_class", drop=False)
    assert len(spread) == 2 and "mean_micro_f1" in spread
    for _, row in spread.iterrows():
        size = None if pd.isna(row["labels_per_class"]) else int(row["labels_per_class"])
        assert row["sd_across_seeds"] == pytest.approx(np.std(by_size[size], ddof=1))
