"""External validation (`score`: a stored classifier on another labelled file) and replication (`rerun`: a stored
evaluation run again in a fresh cache), through engine.api and the CLI."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest

from engine import api
from engine.errors import ClinBenchError, DataError
from engine.options.groups import Options
from engine.runs import experiment
from tests.conftest import cache_at, cli, write_csv


@pytest.fixture(scope="module")
def two_evals(tmp_path_factory, tiny_encoder, default_ds):
    """svc and logreg of the tiny encoder on 60 real letters (12 per label, as small_csv), stored in a cache of this
    module's own (each step executed by name). Tests that change the letters file restore it."""
    cache = tmp_path_factory.mktemp("score-cache")
    with cache_at(cache):
        seen, rows = Counter(), []
        for t, lab in zip(default_ds.texts, default_ds.labels):
            seen[lab] += 1
            if seen[lab] <= 12:
                rows.append({"letter": t, "specialty": lab})
        ds = experiment.DataSpec(str(write_csv(cache.parent / "letters.csv", rows)), "letter", "specialty").load()
        out = []
        for method in ("svc", "logreg"):
            opts = Options.parse({"max_length": 64, "grid": False, "n_boot": 100})
            spec = experiment.Spec("test", experiment.DataSpec(), [str(tiny_encoder)], [method], opts)
            out.append(experiment.execute(spec, {"model": str(tiny_encoder), "method": method}, dataset=ds))
        yield ds, out


def _external_rows(default_ds, per_label: int = 4, skip: int = 12) -> list[dict]:
    """Letters of the default dataset that two_evals does not hold (it takes the first 12 per label)."""
    seen, rows = Counter(), []
    for t, lab in zip(default_ds.texts, default_ds.labels):
        seen[lab] += 1
        if skip < seen[lab] <= skip + per_label:
            rows.append({"body": t, "dept": lab})
    return rows


@pytest.fixture
def external_csv(tmp_path, default_ds):
    return write_csv(tmp_path / "external.csv", _external_rows(default_ds))


def test_score_external_gives_metrics_with_ci_on_another_file(two_evals, external_csv):
    _, (svc, _) = two_evals
    key = svc.artifact.rsplit("/", 1)[-1]
    res = api.score_external(key[:8], external_csv, "body", "dept")
    for k in ("result", "model", "method", "data", "n_letters", "classes", "macro_f1", "macro_f1_ci", "accuracy", "per_class"):
        assert k in res, k
    assert res["result"] == key and res["method"] == "svc" and res["data"] == str(external_csv)
    assert res["n_letters"] == 20 and len(res["classes"]) == 5
    lo, hi = res["macro_f1_ci"]
    assert 0 <= lo <= res["macro_f1"] <= hi <= 1
    assert set(res["per_class"]) == set(res["classes"])
    assert sum(r["support"] for r in res["per_class"].values()) == 20
    assert res["baseline"]["label"] in res["classes"]
    json.dumps(res)


def test_a_label_the_classifier_never_saw_is_refused_and_named(two_evals, tmp_path, default_ds):
    _, (svc, _) = two_evals
    rows = _external_rows(default_ds)
    for r in rows[::8][:3]:  # one letter of three different labels (each keeps 3)
        r["dept"] = "Dermatology"
    path = write_csv(tmp_path / "other.csv", rows)
    with pytest.raises(DataError) as err:
        api.score_external(svc.artifact, path, "body", "dept")
    msg = str(err.value)
    assert "'Dermatology' (3)" in msg and "never trained on" in msg
    assert all(c in msg for c in svc.manifest["data"]["classes"])  # lists the classifier's classes


def test_a_multi_label_file_is_refused(two_evals, tmp_path, default_ds):
    _, (svc, _) = two_evals
    rows = _external_rows(default_ds)
    rows[0]["dept"] = f"{rows[0]['dept']}|{rows[5]['dept']}"
    path = write_csv(tmp_path / "multi.csv", rows)
    with pytest.raises(DataError, match="multi-label"):
        api.score_external(svc.artifact, path, "body", "dept", label_sep="|")


def test_an_unknown_result_is_refused(two_evals, external_csv):
    with pytest.raises(ClinBenchError, match="No stored evaluation matches"):
        api.score_external("ffffffffff", external_csv, "body", "dept")


def test_score_cli_prints_like_evaluate_and_writes_json(two_evals, external_csv, tmp_path):
    _, (_, logreg) = two_evals
    key = logreg.artifact.rsplit("/", 1)[-1]
    out = tmp_path / "score.json"
    done = cli("score", key[:8], "--data", str(external_csv), "--text-column", "body", "--label-column", "dept", "--json", str(out))
    assert done.returncode == 0, done.stderr
    assert "macro-F1" in done.stdout and "95% CI" in done.stdout and "20 letters" in done.stdout
    res = json.loads(out.read_text())
    assert res["result"] == key and res["method"] == "logreg" and res["n_letters"] == 20
    bad = cli("score", key[:8], "--data", str(external_csv), "--text-column", "nope", "--label-column", "dept")
    assert bad.returncode == 2 and "'nope'" in bad.stderr


def test_score_refuses_the_classifiers_own_training_letters_unless_allowed(two_evals, tmp_path, default_ds):
    """Under cv the stored classifier was refit on every letter: its own file is refused (exit 2, naming how many and
    which rows); --allow-overlap scores it and says so in the JSON."""
    ds, (svc, _) = two_evals
    assert svc.manifest["training_letters"]["n"] == len(set(ds.texts))
    source = svc.manifest["data"]["source"]
    with pytest.raises(DataError) as err:
        api.score_external(svc.artifact, source, "letter", "specialty")
    assert "60 of its 60 letters" in str(err.value) and "rows 1, 2, 3" in str(err.value) and "--allow-overlap" in str(err.value)
    key = svc.artifact.rsplit("/", 1)[-1]
    out = tmp_path / "own.json"
    refused = cli("score", key[:8], "--data", source, "--text-column", "letter", "--label-column", "specialty", "--json", str(out))
    assert refused.returncode == 2 and "trained on" in refused.stderr and not out.exists()
    done = cli(
        "score", key[:8], "--data", source, "--text-column", "letter", "--label-column", "specialty", "--allow-overlap", "--json", str(out)
    )
    assert done.returncode == 0, done.stderr
    res = json.loads(out.read_text())
    assert res["n_overlap"] == 60 and res["overlap_rows"] == list(range(60)) and res["unseen"] is None
    assert "no unseen letter" in done.stdout


def test_allow_overlap_reports_the_unseen_letters_alone(two_evals, tmp_path, default_ds):
    """A file of 20 unseen letters with 3 training letters (one a copy differing in case and spacing) put in rows 2, 5, 9."""
    ds, (svc, _) = two_evals
    rows = _external_rows(default_ds)
    unseen = write_csv(tmp_path / "unseen.csv", rows)
    copies = [{"body": "  " + ds.texts[0].upper() + " ", "dept": ds.labels[0]}, {"body": ds.texts[1], "dept": ds.labels[1]}]
    copies.append({"body": ds.texts[2], "dept": ds.labels[2]})
    mixed = list(rows)
    for pos, r in zip((1, 4, 8), copies, strict=True):
        mixed.insert(pos, r)
    path = write_csv(tmp_path / "mixed.csv", mixed)
    with pytest.raises(DataError, match=r"3 of its 23 letters.*rows 2, 5, 9"):
        api.score_external(svc.artifact, path, "body", "dept")
    res = api.score_external(svc.artifact, path, "body", "dept", allow_overlap=True)
    alone = api.score_external(svc.artifact, unseen, "body", "dept")
    assert res["n_overlap"] == 3 and res["overlap_rows"] == [1, 4, 8] and res["n_letters"] == 23
    assert alone["n_overlap"] == 0 and alone["overlap_rows"] == [] and alone["overlap_checked"] and alone["unseen"] is None
    assert res["unseen"]["n_letters"] == 20 and res["unseen"]["macro_f1"] == pytest.approx(alone["macro_f1"])
    assert res["unseen"]["macro_f1_ci"] == pytest.approx(alone["macro_f1_ci"])


def test_a_classifier_stored_before_training_letters_were_recorded_is_scored_unchecked(tmp_path):
    from engine.cache import artifacts
    from engine.evaluation import overlap

    old, new = tmp_path / "old", tmp_path / "new"
    old.mkdir(), new.mkdir()
    artifacts.seal(old, {"kind": "evaluation"})
    overlap.write(new, overlap.hashes(["Chest pain, radiating.", "Knee  swelling"]))
    artifacts.seal(new, {"kind": "evaluation"})
    assert overlap.trained_on(old) is None
    seen = overlap.trained_on(new)
    assert overlap.shared(["knee swelling", "chest pain radiating", "A rash."], seen) == [0, 1]
    (new / overlap.TRAINING_FILE).write_text('{"letters": []}')  # changed after sealing: refused, not read as "none"
    with pytest.raises(ClinBenchError, match="does not match the hash"):
        overlap.trained_on(new)


def test_rerun_of_a_stored_evaluation_is_identical(two_evals, tmp_path):
    _, (svc, _) = two_evals
    key = svc.artifact.rsplit("/", 1)[-1]
    out = tmp_path / "rerun.json"
    done = cli("rerun", key[:8], "--json", str(out), timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "identical" in done.stdout
    res = json.loads(out.read_text())
    assert res["result"] == key and res["identical"] is True and res["problem"] is None
    assert res["macro_f1"]["stored"] == pytest.approx(res["macro_f1"]["rerun"], abs=1e-9)
    assert res["n_predictions_differing"] == 0
    assert res["environment"]["stored"]["torch"] == res["environment"]["now"]["torch"]
    assert "git_commit" in res["environment"]["now"]
    # the rerun stored nothing in this cache: still only the two evaluations
    assert len(api.evaluations()[0]) == 2


def test_rerun_says_when_the_letters_changed_or_are_gone(two_evals, tmp_path):
    _, (svc, _) = two_evals
    source = Path(svc.manifest["data"]["source"])
    original = source.read_bytes()
    try:
        with source.open("a", encoding="utf-8") as fh:
            fh.write('"One more letter, added after the evaluation: chest pain.",neurology\n')
        res = api.rerun(svc.artifact)
        assert res["identical"] is False and "changed since" in res["problem"]
        source.unlink()
        res = api.rerun(svc.artifact)
        assert res["identical"] is False and "is gone" in res["problem"] and str(source) in res["problem"]
        out = tmp_path / "gone.json"
        done = cli("rerun", svc.artifact, "--json", str(out))
        assert done.returncode == 1 and "is gone" in done.stdout
        assert json.loads(out.read_text())["identical"] is False
    finally:
        source.write_bytes(original)


def _external_page(res=None):
    from engine import api
    from ui import external

    external.external_validation(api.evaluations()[0])
    if res is not None:
        external._show(res)


def test_the_compare_page_expander_renders_and_shows_a_result(two_evals, external_csv):
    from streamlit.testing.v1 import AppTest

    _, (svc, _) = two_evals
    at = AppTest.from_function(_external_page, default_timeout=120).run()
    assert not at.exception, at.exception
    assert len(at.selectbox(key="ext-evaluation").options) == 2
    res = api.score_external(svc.artifact, external_csv, "body", "dept")
    at = AppTest.from_function(_external_page, kwargs={"res": res}, default_timeout=120).run()
    assert not at.exception, at.exception
    assert [m.label for m in at.metric][:3] == ["macro-F1", "95% CI", "accuracy"]
    assert len(at.dataframe[0].value) == 5


def test_compare_reports_what_differs():
    from engine.runs import replication

    old = {"test_index": [0, 1, 2], "y_true": ["a", "b", "a"], "y_pred": ["a", "b", "b"], "classes": ["a", "b"], "scores": [[0.9, 0.1]] * 3}
    new = {**old, "y_pred": ["a", "a", "b"], "scores": [[0.9, 0.1], [0.6, 0.4], [0.9, 0.1]]}
    out = {"macro_f1": {"stored": 0.5, "rerun": 0.4}, "differences": []}
    replication._compare(out, old, new)
    assert out["n_predictions_differing"] == 1 and out["max_score_difference"] == pytest.approx(0.3)
    assert any("macro-F1 0.500000 stored, 0.400000 now" in d for d in out["differences"])
    out = {"macro_f1": {"stored": 0.5, "rerun": 0.5}, "differences": []}
    replication._compare(out, old, {**old, "scores": [[0.9000004, 0.0999996]] * 3})  # within the 1e-6 rounding
    assert out["differences"] == [] and out["n_predictions_differing"] == 0


def test_the_compare_page_shows_an_overlap_and_the_unseen_letters_figures(two_evals, tmp_path, default_ds):
    from streamlit.testing.v1 import AppTest

    ds, (svc, _) = two_evals
    rows = _external_rows(default_ds)
    rows.insert(2, {"body": ds.texts[5], "dept": ds.labels[5]})
    res = api.score_external(svc.artifact, write_csv(tmp_path / "mixed.csv", rows), "body", "dept", allow_overlap=True)
    at = AppTest.from_function(_external_page, kwargs={"res": res}, default_timeout=120).run()
    assert not at.exception, at.exception
    assert any("1 of the 21 letters were among its training letters (rows 3)" in w.value for w in at.warning)
    assert [m.label for m in at.metric].count("macro-F1") == 2 and len(at.dataframe) == 2  # all letters, then the unseen ones
