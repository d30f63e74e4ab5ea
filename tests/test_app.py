"""AppTest smoke tests of every dashboard page (no browser): each renders without an exception,
shows what it should for an empty cache and for a cache with real stored evaluations (tiny model),
and turns bad input into st.error."""

from __future__ import annotations

import json

import pytest
from streamlit.testing.v1 import AppTest

from engine.runs import experiment
from tests.conftest import ROOT, cache_at, run_step

PAGES = ["1_Data.py", "2_Models.py", "3_Runs.py", "4_Embeddings.py", "5_Compare.py", "6_Classify.py", "7_Export.py"]


def page(name: str) -> AppTest:
    return AppTest.from_file(str(ROOT / ("app.py" if name == "app.py" else f"pages/{name}")), default_timeout=180)


@pytest.fixture
def empty_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("CLINBENCH_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


@pytest.fixture(scope="module")
def stored(tmp_path_factory, tiny_encoder, default_ds):
    """A cache holding two evaluations (svc, logreg) of the tiny encoder on 60 real letters."""

    from tests.conftest import write_csv

    cache = tmp_path_factory.mktemp("app-cache")
    with cache_at(cache):
        per: dict = {}
        rows = []
        for t, lab in zip(default_ds.texts, default_ds.labels):
            if per.get(lab, 0) < 12:
                per[lab] = per.get(lab, 0) + 1
                rows.append({"letter": t, "specialty": lab})
        csv = write_csv(cache.parent / "letters.csv", rows)
        ds = experiment.DataSpec(str(csv), "letter", "specialty").load()
        for m in ("svc", "logreg"):
            run_step(ds, tiny_encoder, m, max_length=64, grid=False, n_boot=100)
        yield cache, ds


def test_home_page_shows_default_dataset_models_and_the_run_button(empty_cache):
    at = page("app.py").run()
    assert not at.exception, at.exception
    assert at.title[0].value == "ClinBench"
    text = " ".join(m.value for m in at.markdown)
    assert "600 MTSamples letters" in text
    models_table = at.dataframe[1].value
    assert list(models_table["Name"])[:2] == ["minilm", "smollm2"]
    assert models_table.set_index("Name").loc["minilm", "Offline"] == "yes"
    assert any(m.value.startswith("The cache holds") for m in at.markdown)  # storage, with how to prune
    assert any(b.label == "Run the default comparison" for b in at.button)
    assert any("Workers" in c.value for c in at.caption)


@pytest.mark.parametrize("name", PAGES)
def test_every_page_renders_on_an_empty_cache(empty_cache, name):
    at = page(name).run()
    assert not at.exception, at.exception
    assert not at.error, [e.value for e in at.error]


def test_models_page_explains_unknown_and_missing_models(empty_cache, tiny_decoder):
    at = page("2_Models.py").run()
    names = list(at.dataframe[0].value["Name"])
    assert names[:2] == ["minilm", "smollm2"] and {"biogpt", "biomedlm", "pmc-llama", "biobert", "clinicalbert"} <= set(names)
    at.text_input[0].set_value("not a model").run()
    assert at.error and "Unknown model 'not a model'" in at.error[0].value
    at.text_input[0].set_value(str(tiny_decoder)).run()
    row = at.dataframe[1].value.iloc[0]
    assert row["Kind"] == "decoder" and row["Offline"] == "yes"


def test_runs_page_refuses_a_bad_form_and_queues_a_good_one(empty_cache, monkeypatch):
    from engine.runs import jobs

    monkeypatch.setattr(jobs, "ensure_worker", lambda: [])  # queue only; no worker process in this test
    at = page("3_Runs.py").run()

    def start():
        return next(b for b in at.button if b.label == "Start run")

    at.text_input[1].set_value("no-such-org/no/model")  # "More models" (a form: values go in with the submit)
    start().click().run()
    assert at.error and "No folder at no-such-org/no/model" in at.error[0].value
    assert jobs.list_runs() == []  # nothing queued
    at.text_input[1].set_value("")
    next(b for b in at.button if b.label == "Preview prompt").click().run()  # what zero-shot/few-shot would read
    assert not at.error and "Medical transcription:" in at.code[0].value and "scored answers" in at.code[0].value
    next(b for b in at.button if b.label == "Estimate time").click().run()
    assert jobs.list_runs() == [] and any("No estimate yet" in m.value for m in at.info)  # nothing ran on this machine yet
    start().click().run()
    assert not at.exception and not at.error
    (run,) = jobs.list_runs()
    assert run.status == "queued" and run.spec["models"] == ["minilm"]
    assert (
        run.spec["options"]["max_length"] == 512 and run.spec["options"]["smote"] is True
    )  # the form's defaults are the options' defaults
    assert any("Run 1" in m.value for m in at.markdown)
    assert any("Protocol **holdout**" in m.value for m in at.info), "the protocol chosen, and why, is shown after the submit"
    start().click().run()  # a second run: the live view switches to it
    assert len(jobs.list_runs()) == 2 and at.selectbox(key="run-pick").value == 2
    assert any("Run 2" in m.value for m in at.markdown)


def test_runs_page_says_when_it_started_a_worker_for_queued_steps(empty_cache, monkeypatch):
    """The Runs page lists runs through api.wake_workers: a worker it starts (steps queued, none running) is said in a line."""
    from engine.runs import jobs, launch

    started: list = []
    monkeypatch.setattr(jobs, "ensure_worker", lambda: started)  # what launch.ensure_worker started; no process here
    at = page("3_Runs.py").run()
    assert not at.exception and not any("started a worker" in m.value for m in at.info)
    started.append(launch.Started("local", 4242, 3))
    at = page("3_Runs.py").run()
    assert not at.exception and any(
        m.value == "3 step(s) were queued with no worker running: started a worker (pid 4242)." for m in at.info
    )


def test_compare_embeddings_classify_export_with_stored_results(stored, monkeypatch):
    from engine import api

    cache, ds = stored
    monkeypatch.setenv("CLINBENCH_CACHE", str(cache))
    at = page("5_Compare.py").run()
    assert not at.exception and not at.error
    comp = at.dataframe[0].value
    assert len(comp) == 2 and comp["Macro-F1"].between(0, 1).all() and "macro_f1" not in comp  # human headers
    assert any("vs" in m.value and "p =" in m.value for m in at.markdown)  # the significance verdict
    assert any(h.value.startswith("Calibration") for h in at.subheader)  # Brier/ECE table and the reliability diagram
    assert any("Brier (95% CI)" in df.value for df in at.dataframe)
    # issue 30: the misclassified letters name the input file's rows, counted from 1
    ev = {e.label: e for e in api.evaluations()[0]}[at.selectbox(key="compare-wrong").value]
    wrong = next(d.value for d in at.dataframe if "Predicted" in d.value.columns and "Row" in d.value.columns)
    assert list(wrong["Row"]) == [r + 1 for r in api.misclassified(ev)["row"]] and wrong["Row"].min() >= 1

    at = page("6_Classify.py").run()
    at.button[0].click().run()  # load a test letter
    letter = at.text_area[0].value
    assert letter in ds.texts
    at.button[1].click().run()  # classify
    assert not at.exception and not at.error, [e.value for e in at.error]
    answers = at.dataframe[0].value
    assert len(answers) == 2 and set(answers["Label"]) <= set(ds.classes)
    near = at.dataframe[-1].value  # the nearest training letters in the first classifier's embedding space
    assert len(near) == 5 and near["Similarity"].is_monotonic_decreasing and set(near["Label"]) <= set(ds.classes)
    at.text_area[0].set_value("   ").run()
    at.button[1].click().run()
    assert at.error and "empty" in at.error[0].value

    at = page("7_Export.py").run()
    assert not at.exception and not at.error
    at.button[0].click().run()  # build the report
    assert not at.error

    at = page("4_Embeddings.py")  # the map colours wrong exactly the letters Compare lists; its caption fits the protocol
    at.query_params["colour"], at.query_params["frozen"] = "correct / wrong", ev.key
    at.run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    assert len(list((cache / "projections").glob("*.npy"))) == 1
    assert at.selectbox(key="ev-frozen").label == "Evaluation (frozen embeddings)"
    assert f"wrong ({len(wrong)})" in [t["name"] for t in json.loads(at.get("plotly_chart")[0].proto.spec)["data"]]
    grey = any("Grey: training letters" in c.value for c in at.caption)
    assert grey == (ev.protocol != "cv") and not any("Preparing UMAP" in c.value for c in at.caption)


def test_runs_page_draws_the_curves_a_training_step_logs(empty_cache, monkeypatch):
    """A step that is training (its worker wrote metrics into the store) shows its loss curve on the Runs page."""
    import time

    from engine.runs import jobs
    from engine.runs.store import database as store

    monkeypatch.setattr(jobs, "ensure_worker", lambda: [])
    run_id = jobs.submit(experiment.parse_spec({"models": ["minilm"], "methods": ["lora"]}), start_worker=False)
    with store.connect() as conn:
        conn.execute("UPDATE steps SET status = 'done', started = ?, finished = ? WHERE run_id = ?", (time.time() - 5, time.time(), run_id))
        for step, loss in enumerate([1.6, 1.2, 0.9, 0.7], start=1):
            conn.execute("INSERT INTO metrics VALUES (?, 0, 'train_loss', ?, ?, ?)", (run_id, step * 5, loss, time.time()))
        conn.execute("INSERT INTO metrics VALUES (?, 0, 'val_macro_f1', 20, 0.55, ?)", (run_id, time.time()))
    at = page("3_Runs.py").run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    charts = at.get("plotly_chart")
    assert len(charts) == 1
    figure = json.loads(charts[0].proto.spec)
    names = {t["name"] for t in figure["data"]}
    assert names == {"train loss", "val macro f1"} and figure["layout"]["title"]["text"].startswith("Training curves: minilm")


def test_compare_and_embeddings_keep_their_selection_in_the_url(stored, monkeypatch):
    cache, _ = stored
    monkeypatch.setenv("CLINBENCH_CACHE", str(cache))
    at = page("5_Compare.py").run()
    labels = at.multiselect(key="compare-cm").options
    assert at.multiselect(key="compare-cm").value == labels[:2] and at.query_params["cm"] == labels[:2]
    assert at.query_params["run"] == "all" and len(at.query_params["dataset"]) == 64
    shared = page("5_Compare.py")  # a colleague opens the bookmarked view
    shared.query_params["cm"] = [labels[1]]
    shared.run()
    assert not shared.exception and shared.multiselect(key="compare-cm").value == [labels[1]]

    at = page("4_Embeddings.py")
    at.query_params["colour"] = "correct / wrong"
    at.run()
    assert not at.exception and at.radio(key="emb-colour").value == "correct / wrong"
    assert at.query_params["model"] == at.selectbox(key="emb-model").value


def test_letter_text_leaves_in_downloads_only_when_asked(stored, monkeypatch):
    cache, _ = stored
    monkeypatch.setenv("CLINBENCH_CACHE", str(cache))
    at = page("5_Compare.py").run()
    labels = [b.proto.label for b in at.get("download_button")]
    assert "CSV (without letter text)" in labels and not at.warning
    at.checkbox(key="letters-compare").check().run()
    assert any("patient data" in w.value for w in at.warning)
    assert "CSV (without letter text)" not in [b.proto.label for b in at.get("download_button")]
