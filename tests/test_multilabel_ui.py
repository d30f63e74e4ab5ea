"""Multi-label data and evaluations through every dashboard page (AppTest, no browser): each page renders without an
exception and says what it shows: the Data page's labels per letter, letters with no label and co-occurrence; the Runs
form on a multi-label dataset; Compare's micro-, macro- and samples-F1 (a selectable headline, with CIs), subset accuracy,
Hamming loss and the per-label heatmap in place of the confusion matrix; Embeddings coloured by one label; Classify's
labels with their probabilities and thresholds; Export's per-label table."""

from __future__ import annotations

import io
import json
import zipfile

import pytest
from streamlit.testing.v1 import AppTest

from engine.data.labels import indicator
from engine.errors import ClinBenchError
from tests.conftest import ROOT, cache_at, run_step, write_csv
from tests.test_multilabel import multi_label_ds

ML_NAMES = ("Micro-F1", "Macro-F1", "Samples-F1", "Subset accuracy", "Hamming loss")


def page(name: str) -> AppTest:
    return AppTest.from_file(str(ROOT / "pages" / name), default_timeout=180)


def write_jsonl(path, ds):
    path.write_text("".join(json.dumps({"text": t, "labels": list(labs)}) + "\n" for t, labs in zip(ds.texts, ds.labels)))
    return path


@pytest.fixture(scope="module")
def ml_stored(tmp_path_factory, tiny_encoder, default_ds):
    """A cache of its own holding two multi-label evaluations of one small JSONL dataset (three labels, pairs of them,
    letters with none): svc of the tiny encoder and the tf-idf reference, both holdout."""

    from engine import api

    cache = tmp_path_factory.mktemp("ml-cache")
    with cache_at(cache):
        path = write_jsonl(cache.parent / "multi.jsonl", multi_label_ds(default_ds))
        ds = api.load_dataset(str(path), "text", "labels")
        assert ds.multi_label and () in ds.labels
        for model, method in ((tiny_encoder, "svc"), ("tfidf", "tfidf")):
            run_step(ds, model, method, protocol="holdout", test_size=0.3, max_length=64, grid=False, n_boot=100)
        yield cache, ds, path


@pytest.fixture
def ml_cache(ml_stored, monkeypatch):
    monkeypatch.setenv("CLINBENCH_CACHE", str(ml_stored[0]))
    return ml_stored


def _words(at) -> str:
    parts = [m.value for m in at.markdown] + [c.value for c in at.caption] + [i.value for i in at.info]
    parts += [s.value for s in at.success] + [" ".join(map(str, d.value.columns)) for d in at.dataframe]
    return " ".join(parts)


def _charts(at) -> list[dict]:
    return [json.loads(c.proto.spec) for c in at.get("plotly_chart")]


def _titles(at) -> list[str]:
    return [f["layout"].get("title", {}).get("text", "") for f in _charts(at)]


def _ok(at) -> None:
    assert not at.exception, at.exception
    assert not at.error, [e.value for e in at.error]


def test_data_page_recognises_a_json_list_label_column(cache, default_ds, tmp_path):
    path = write_jsonl(tmp_path / "multi.jsonl", multi_label_ds(default_ds))
    at = page("1_Data.py").run()
    at.file_uploader(key="upload").upload("multi.jsonl", path.read_bytes(), "application/json").run()
    _ok(at)
    assert at.selectbox[1].value == "labels"
    words = _words(at)
    assert "Several labels per letter" in words and "10** letter(s) carry no label" in words
    per_letter = next(d.value for d in at.dataframe if "Labels on a letter" in d.value.columns)
    assert dict(zip(per_letter["Labels on a letter"], per_letter["Letters"])) == {0: 10, 1: 42, 2: 16}
    cooc = next(f for f in _charts(at) if f["layout"]["title"]["text"].startswith("Letters carrying both labels"))
    matrix = cooc["data"][0]["z"]
    assert [matrix[i][i] for i in range(3)] == [22, 30, 22] and matrix[0][1] == 8 and matrix[0][2] == 0  # a+b 8 times, never a+c


def test_data_page_reads_one_0_1_column_per_label(cache, default_ds, tmp_path):
    ds = multi_label_ds(default_ds)
    classes = ds.classes
    rows = [{"text": t, **{f"is_{c}": int(c in labs) for c in classes}} for t, labs in zip(ds.texts, ds.labels)]
    path = write_csv(tmp_path / "columns.csv", rows)
    at = page("1_Data.py").run()
    at.file_uploader(key="upload").upload("columns.csv", path.read_bytes(), "text/csv").run()
    assert "Several labels per letter" not in _words(at)  # one label column guessed: not multi-label yet
    at.multiselect(key="label-columns").set_value([f"is_{c}" for c in classes]).run()
    _ok(at)
    assert "Several labels per letter" in _words(at) and "carry no label" in _words(at)
    next(b for b in at.button if b.label == "Save dataset").click().run()
    _ok(at)
    assert any("Saved 'columns' (68 letters)" in s.value for s in at.success)


def test_runs_page_queues_a_run_on_a_multi_label_dataset(cache, default_ds, tmp_path, monkeypatch):
    from engine import api
    from engine.runs import jobs

    monkeypatch.setattr(jobs, "ensure_worker", lambda: [])
    path = write_jsonl(tmp_path / "multi.jsonl", multi_label_ds(default_ds))
    saved = api.save_dataset(str(path), "multi", "text", "labels")
    at = page("3_Runs.py").run()
    _ok(at)
    assert any("SMOTE is not defined for label sets, so it is replaced by class weights per label" in c.value for c in at.caption)
    assert any(o.startswith("zero-shot") for o in at.multiselect(key="run-methods").options)  # the default dataset: one label per letter
    at.selectbox(key="run-dataset").select(saved.id).run()
    _ok(at)  # a multi-label dataset: only the methods that predict label sets are offered, and the form says why
    boxes = [m for m in at.multiselect if m.key in ("run-methods", "run-training")]  # on a CPU, fine-tuning in a box of its own
    offered = [o.split(" — ")[0] for m in boxes for o in m.options]
    assert "svc" in offered and "lora" in offered and not {"zero-shot", "few-shot", "instruct-lora", "setfit"} & set(offered)
    assert any("only the methods that predict a set of labels are offered" in c.value for c in at.caption)
    at.multiselect(key="run-methods").set_value(["svc"])
    next(b for b in at.button if b.label == "Start run").click().run()
    _ok(at)
    (run,) = jobs.list_runs()
    assert run.spec["data"]["label_column"] == "labels" and run.spec["methods"] == ["svc"]


def test_compare_page_shows_the_multi_label_scores_and_the_per_label_heatmap(ml_cache):
    at = page("5_Compare.py").run()
    _ok(at)
    comp = at.dataframe[0].value
    assert len(comp) == 2 and set(ML_NAMES) <= set(comp.columns) and "Micro-F1 95% CI" in comp
    assert comp["Micro-F1"].between(0, 1).all() and (comp["Hamming loss"] >= 0).all()
    assert comp["Micro-F1"].is_monotonic_decreasing  # best first by the headline, as the chart
    titles = _titles(at)
    assert titles[0].startswith("Micro-F1 per model and method") and any(
        t.startswith("Per label: precision, recall and F1") for t in titles
    )
    assert not any("Confusion matrix" in t for t in titles) and "Confusion matrices" not in [s.value for s in at.subheader]
    assert "compare-cm" not in [m.key for m in at.multiselect]
    words = _words(at)
    assert "no confusion matrix" in words and "whole label set" in words
    sig = next(d.value for d in at.dataframe if "Verdict" in d.value.columns)  # the paired test of the headline
    assert len(sig) == 1 and set(sig["Metric"]) == {"Micro-F1"}
    heat = next(f for f in _charts(at) if f["layout"]["title"]["text"].startswith("Per label"))
    assert [t["type"] for t in heat["data"]] == ["heatmap"] * 3 and len(heat["data"][0]["y"]) == 3
    wrong = next(d.value for d in at.dataframe if "True label" in d.value.columns)
    assert len(wrong) and all(isinstance(v, str) for v in wrong["True label"])
    assert any("+" in v or v == "(no label)" for v in [*wrong["True label"], *wrong["Predicted"]])  # label sets, as text

    at.radio(key="compare-metric").set_value("samples_f1").run()
    _ok(at)
    assert _titles(at)[0].startswith("Samples-F1 per model and method") and at.query_params["metric"] in ("samples_f1", ["samples_f1"])
    bars = _charts(at)[0]
    assert bars["layout"]["xaxis"]["title"]["text"].startswith("Samples-F1")
    sig = next(d.value for d in at.dataframe if "Verdict" in d.value.columns)
    assert set(sig["Metric"]) == {"Samples-F1"}


def test_embeddings_page_colours_by_one_chosen_label(ml_cache):
    _, ds, _ = ml_cache
    at = page("4_Embeddings.py").run()
    _ok(at)
    assert at.selectbox(key="emb-label").options == list(ds.classes)
    label = ds.classes[1]
    at.selectbox(key="emb-label").select(label).run()
    _ok(at)
    names = {t["name"].rsplit(" (", 1)[0] for t in _charts(at)[0]["data"]}
    assert names == {f"has {label}", f"not {label}", "training letter"}
    at.radio(key="emb-colour").set_value("correct / wrong").run()
    _ok(at)
    assert {t["name"].rsplit(" (", 1)[0] for t in _charts(at)[0]["data"]} <= {"correct", "wrong", "training letter"}


def test_classify_page_shows_each_label_probability_and_threshold(ml_cache):
    _, ds, _ = ml_cache
    at = page("6_Classify.py").run()
    at.button[0].click().run()  # a test letter
    assert at.text_area[0].value in "\n".join(ds.texts) and any("true label:" in c.value for c in at.caption)
    at.button[1].click().run()
    _ok(at)
    answers = next(d.value for d in at.dataframe if "Predicted labels" in d.value.columns)
    assert len(answers) == 2
    for text in answers["Predicted labels"]:
        assert text == "(no label)" or set(text.split(" + ")) <= set(ds.classes)
    per_label = next(d.value for d in at.dataframe if "Threshold" in d.value.columns)
    assert len(per_label) == 2 * len(ds.classes) and per_label["Threshold"].between(0, 1).all()
    assert ((per_label["Probability"] >= per_label["Threshold"]) == (per_label["Predicted"] == "yes")).all()
    assert any(t.startswith("Each label's probability and threshold") for t in _titles(at))
    assert at.metric[0].label == "Majority label set"


def test_classify_rows_and_agreement_of_multi_label_classifiers(ml_cache):
    from engine import api

    _, ds, _ = ml_cache
    evals, _ = api.evaluations()
    rows = api.classify(ds.texts[0], evals)
    for r in rows:
        assert r["task"] == "multi-label" and isinstance(r["labels"], tuple) and set(r["thresholds"]) == set(ds.classes)
        assert r["predicted"] == (" + ".join(r["labels"]) or "(no label)")
        assert r["labels"] == tuple(c for c in ds.classes if r["scores"][c] >= r["thresholds"][c])
    vote = api.agreement(rows)
    assert vote["n"] == 2 and set(vote["label_votes"]) <= set(ds.classes)


def test_export_page_and_report_have_the_per_label_table_and_no_confusion_matrix(ml_cache):
    from engine import api
    from ui import report

    at = page("7_Export.py").run()
    _ok(at)
    assert {e.label for e in at.expander} >= {"precision recall F1 per label", "micro macro samples F1 by model and method"}
    evals, _ = api.evaluations()
    figs, tables = report.figures(evals), report.tables(evals)
    assert not any("confusion" in name for name in figs) and "precision recall F1 per label" in figs
    per_label = tables["precision recall F1 per label"]
    assert set(per_label["Label"]) == set(evals[0].metrics["classes"]) and {"Precision", "Recall", "F1", "Predicted for"} <= set(per_label)
    assert set(ML_NAMES) <= set(tables["micro macro samples F1 by model and method"].columns)
    zf = zipfile.ZipFile(io.BytesIO(api.report_zip(figs, tables, formats=("html",))))
    assert "tables/precision-recall-f1-per-label.csv" in zf.namelist() and not any("confusion" in n for n in zf.namelist())


def test_a_multi_label_classifier_is_scored_on_another_file_at_its_own_thresholds(ml_cache, tmp_path):
    from sklearn.metrics import f1_score

    from engine import api
    from engine.methods import classifiers
    from tests.conftest import cli

    _, ds, _ = ml_cache
    svc = next(e for e in api.evaluations()[0] if e.method == "svc")
    texts, sets = ds.texts[::2], ds.labels[::2]  # single labels, pairs and letters with none
    assert any(len(s) == 2 for s in sets) and () in sets
    rows = [{"note": t, "tags": "|".join(labs)} for t, labs in zip(texts, sets, strict=True)]
    path = write_csv(tmp_path / "other.csv", rows)  # several labels in one cell, '|' between them; some cells empty
    res = api.score_external(svc.key, path, "note", "tags", label_sep="|", allow_overlap=True)  # its training letters too
    assert res["task"] == "multi-label" and res["n_letters"] == len(texts) and {"micro_f1_ci", "samples_f1", "per_label"} <= set(res)
    clf = classifiers.load(svc.folder)
    T = indicator(sets, clf.classes_)
    P = indicator(clf.predict(texts), clf.classes_)
    assert res["micro_f1"] == pytest.approx(f1_score(T, P, average="micro", zero_division=0))
    labelled = write_csv(tmp_path / "labelled.csv", [r for r in rows if r["tags"]])
    with pytest.raises(ClinBenchError, match="give their separator"):  # without --label-sep the cell 'a|b' is one unknown label
        api.score_external(svc.key, labelled, "note", "tags")
    out = tmp_path / "score.json"
    r = cli("score", svc.key[:10], "--data", str(path), "--text-column", "note", "--label-column", "tags", "--label-sep", "|",
            "--allow-overlap", "--json", str(out), env_extra={"CLINBENCH_CACHE": str(ml_cache[0])})  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert json.loads(out.read_text())["micro_f1"] == pytest.approx(res["micro_f1"]) and "micro-F1" in r.stdout
    at = page("5_Compare.py").run()
    _ok(at)
    assert any("External validation" in e.label for e in at.expander)
