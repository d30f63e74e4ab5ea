"""The path from a user's letters to a verdict (issue 30): Home points to the Data page; a dataset just saved is the
Runs form's choice; the form says a tf-idf reference row is added; on a CPU, "Select all" under Methods leaves the
fine-tuning methods out (they are offered apart, each with its estimate); a finished run links to Compare filtered on it;
the 1280 px boxes hold their text."""

from __future__ import annotations

import json
import time
from urllib.parse import parse_qsl

import pytest

from engine import api
from engine.runs import experiment, jobs
from engine.runs.store import database as store
from tests.test_app import page


def via_app(name: str, **state):
    """A page reached through the app's navigation (as a user does: its page links resolve), with `state` preset."""
    at = page("app.py").run()
    for k, v in state.items():
        at.session_state[k] = v
    return at.switch_page(f"pages/{name}").run()


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("CLINBENCH_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(jobs, "ensure_worker", lambda: [])
    return tmp_path / "cache"


def test_home_offers_my_letters_beside_the_bundled_comparison(cache):
    at = page("app.py").run()
    assert not at.exception, at.exception
    links = {link.proto.label: link.proto.page for link in at.get("page_link")}
    assert "Compare models on my letters →" in links and links["Compare models on my letters →"].endswith(("Data", "1_Data.py"))
    assert any(b.label == "Run the default comparison" for b in at.button)


def test_runs_form_starts_on_the_dataset_just_saved_and_names_the_reference(cache, small_csv):
    path = api.store_upload("clinic.csv", small_csv.read_bytes())
    saved = api.save_dataset(path, "clinic", "letter", "specialty")
    at = via_app("3_Runs.py", **{"saved-dataset": saved.id})  # what the Data page's Save leaves behind
    assert not at.exception and not at.error, [e.value for e in at.error]
    assert at.selectbox(key="run-dataset").value == saved.id
    assert any("tf-idf reference" in c.value and "one more row" in c.value for c in at.caption)
    at.run()  # a later rerun keeps the user's choice
    assert at.selectbox(key="run-dataset").value == saved.id


def test_select_all_under_methods_offers_what_fits_a_cpu(cache, monkeypatch):
    monkeypatch.setattr(api, "device", lambda: "cpu (CPU), float32")
    at = page("3_Runs.py").run()
    assert not at.exception
    quick = [o.split(" — ")[0] for o in at.multiselect(key="run-methods").options]
    training = at.multiselect(key="run-training")
    slow = [o.split(" — ")[0] for o in training.options]
    assert {"svc", "logreg"} <= set(quick) and not {"lora", "linear-probe", "setfit", "domain-adapt"} & set(quick)
    assert {"lora", "linear-probe", "lora-svc", "adapt-svc"} <= set(slow) and training.value == []
    assert all("no estimate yet" in o or "about " in o for o in training.options)  # each flagged with its time on this CPU
    assert "Select all" in training.help or "'Select all' leaves them out" in training.help
    monkeypatch.setattr(api, "device", lambda: "cuda:0 (NVIDIA H100), bfloat16")
    gpu = page("3_Runs.py").run()
    assert "lora" in [o.split(" — ")[0] for o in gpu.multiselect(key="run-methods").options]
    assert not [m for m in gpu.multiselect if m.key == "run-training"]


def test_a_finished_run_links_to_compare_filtered_on_it(cache):
    run_id = jobs.submit(experiment.parse_spec({"models": ["tfidf"], "methods": ["tfidf"]}), start_worker=False)
    with store.connect() as conn:
        conn.execute(
            "UPDATE steps SET status = 'done', started = ?, finished = ?, result = ? WHERE run_id = ?",
            (time.time() - 5, time.time(), json.dumps({"macro_f1": 0.5, "macro_f1_ci": [0.4, 0.6]}), run_id),
        )
    at = via_app("3_Runs.py")
    assert not at.exception, at.exception
    (link,) = [p.proto for p in at.get("page_link") if "Compare" in p.proto.label]
    run = api.get_run(run_id)
    assert link.page.endswith(("Compare", "5_Compare.py")) and link.label == f"Compare the results of run {run_id} →"
    assert dict(parse_qsl(link.query_string.lstrip("?"))) == {"dataset": run.data_hash, "run": str(run_id)}


def test_a_per_method_default_is_said_below_its_box(cache):
    at = page("3_Runs.py").run()
    repeats = at.number_input(key="opt-cv_repeats")
    assert repeats.proto.placeholder == "by method ↓"
    assert any(c.value.startswith("Empty: by method:") for c in at.caption)
