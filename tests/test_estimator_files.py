"""Stored estimators cannot run code when loaded (issue 29, item 2): every kind a method stores goes through skops with
the trusted list and comes back answering the same; a crafted file, sealed as ClinBench seals, is refused without running;
pickles of ClinBench <= 0.2 load only after the user's confirmation, which converts them once."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from engine.cache import artifacts, estimator_files
from engine.cache.estimator_files import PickledClassifier, load_estimator, save_estimator
from engine.errors import ArtifactError
from tests.conftest import ROOT

LEGACY = ROOT / "tests" / "fixtures" / "legacy-v0.1-cache"


def _stored_kinds() -> dict[str, tuple[object, object]]:
    """(estimator, what it reads) of every kind a method stores, fitted on small random data."""
    from engine.methods import estimators as E
    from engine.methods import linear_probe, tfidf
    from engine.options.groups import ClassifierOptions

    rng = np.random.default_rng(0)
    X, y = rng.normal(size=(40, 8)), np.array(["a", "b"] * 20)
    Y = (rng.random((40, 3)) > 0.5).astype(int)
    texts = [f"word{i % 5} chest pain visit {i}" for i in range(40)]
    constant = Y.copy()
    constant[:, 2] = 1  # a label every letter has: its classifier is a _Constant
    lonely = np.array(["a"] * 20 + ["b"] * 19 + ["c"])  # a label of one letter: the SVC is calibrated on a FrozenEstimator
    return {
        "svc + smote (calibrated)": (E.fit(X, y, "svc", ClassifierOptions(smote=True, grid=False), 0).estimator, X),
        "svc, a label of one letter": (E.fit(X, lonely, "svc", ClassifierOptions(grid=False), 0).estimator, X),
        "logreg + smote, grid": (E.fit(X, y, "logreg", ClassifierOptions(smote=True, grid=True), 0).estimator, X),
        "one-vs-rest (multi-label)": (E.fit_multilabel(X, constant, ["p", "q", "r"], "svc", ClassifierOptions(grid=False), 0).estimator, X),
        "tf-idf pipeline": (tfidf.pipeline(0).fit(texts, y), texts),
        "tf-idf one-vs-rest": (tfidf._fit_multilabel(texts, Y, ["p", "q", "r"], np.arange(40), 0, None)[0], texts),
        "linear head": (linear_probe.LinearHead(["a", "b"], rng.normal(size=(2, 8)), np.zeros(2), False), X),
        "linear head (multi-label)": (
            linear_probe.LinearHead(["a", "b", "c"], rng.normal(size=(3, 8)), np.zeros(3), True, [0.4, 0.5, 0.6]),
            X,
        ),
    }


def _seal(folder: Path, write, **manifest) -> Path:
    folder.mkdir(parents=True)
    write(folder)
    artifacts.seal(folder, {"model": {"name": "m"}, "method": "svc", "predictor": "embedding-classifier", **manifest})
    return folder


def test_every_stored_kind_round_trips_and_the_trusted_list_is_what_they_need(tmp_path):
    import skops.io as sio

    needed = set()
    for i, (name, (est, data)) in enumerate(_stored_kinds().items()):
        folder = _seal(tmp_path / str(i), lambda f, est=est: save_estimator(f, est))
        again = load_estimator(folder)
        assert type(again) is type(est), name
        assert np.allclose(again.predict_proba(data), est.predict_proba(data)), name
        assert [str(c) for c in again.classes_] == [str(c) for c in est.classes_], name
        needed |= set(sio.get_untrusted_types(file=folder / estimator_files.FILE))
    assert needed == set(estimator_files.TRUSTED)  # nothing trusted that no stored estimator needs


class Stranger:  # a class no stored classifier holds
    def predict_proba(self, X):
        return np.ones((len(X), 1))


def test_a_type_off_the_list_is_refused_when_saved_and_when_loaded(tmp_path):
    import skops.io as sio

    with pytest.raises(ArtifactError, match="Stranger"):
        save_estimator(tmp_path, Stranger())
    folder = _seal(tmp_path / "crafted", lambda f: sio.dump(Stranger(), f / estimator_files.FILE))  # sealed as ClinBench would
    with pytest.raises(ArtifactError, match="holds types no ClinBench classifier holds"):
        load_estimator(folder)


class Payload:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _crafted_pickle(tmp_path) -> tuple[Path, Path]:
    import joblib

    marker = tmp_path / "ran"
    folder = _seal(tmp_path / "evil", lambda f: joblib.dump(Payload(marker), f / estimator_files.PICKLE_FILE))
    return folder, marker


def test_a_crafted_pickle_sealed_like_clinbench_never_runs(tmp_path):
    """The issue's attack: a pickle calling os.system, sealed with the engine's own `seal`. Loading it is refused without the
    user's confirmation; with it, the conversion refuses the global it names before importing anything."""
    from engine.methods import classifiers

    folder, marker = _crafted_pickle(tmp_path)
    with pytest.raises(PickledClassifier, match="--convert-pickles"):
        classifiers.load(folder)
    before = sorted((p.name, p.read_bytes()) for p in folder.iterdir())
    with pytest.raises(ArtifactError, match=r"names posix\.system"):
        estimator_files.convert_pickle(folder)
    assert not marker.exists()
    assert sorted((p.name, p.read_bytes()) for p in folder.iterdir()) == before


PICKLING = ("pickle", "_pickle", "cPickle", "dill", "cloudpickle", "joblib", "shelve", "marshal")


def _pickle_reads(path: Path) -> list[tuple[int, str]]:
    """(line, function) of every place in a module that can read a pickle: an import of a pickling module, torch.load without
    weights_only=True, allow_pickle=True, pandas' read_pickle."""
    import ast

    found = []

    def visit(node, func):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            func = node.name
        hit = False
        if isinstance(node, ast.Import):
            hit = any(a.name.split(".")[0] in PICKLING for a in node.names)
        elif isinstance(node, ast.ImportFrom):  # joblib's parallel helpers pickle only what this process hands them
            hit = (node.module or "").split(".")[0] in PICKLING and not (
                node.module == "joblib" and all(a.name in {"Parallel", "delayed", "parallel_config", "cpu_count"} for a in node.names)
            )
        elif isinstance(node, ast.Call):
            kw = {k.arg: k.value for k in node.keywords}
            f = node.func
            name = f.attr if isinstance(f, ast.Attribute) else getattr(f, "id", "")
            owner = getattr(f.value, "id", "") if isinstance(f, ast.Attribute) else ""
            safe = isinstance(kw.get("weights_only"), ast.Constant) and kw["weights_only"].value is True
            hit = (owner == "torch" and name == "load" and not safe) or name == "read_pickle"
            hit |= isinstance(kw.get("allow_pickle"), ast.Constant) and kw["allow_pickle"].value is True
        if hit:
            found.append((node.lineno, func))
        for child in ast.iter_child_nodes(node):
            visit(child, func)

    visit(ast.parse(path.read_text()), None)
    return found


def test_no_pickle_is_read_anywhere_else_in_the_engine():
    """The engine reads a pickle in one place: estimator_files._unpickle, reached only through convert_pickle (confirmed)."""
    found = {str(p.relative_to(ROOT)): hits for p in sorted((ROOT / "engine").rglob("*.py")) if (hits := _pickle_reads(p))}
    assert set(found) == {"engine/cache/estimator_files.py"}, found
    assert {func for _, func in found["engine/cache/estimator_files.py"]} == {"_unpickle"}
    callers = [p for p in (ROOT / "engine").rglob("*.py") if "_unpickle(" in p.read_text()]
    assert callers == [ROOT / "engine" / "cache" / "estimator_files.py"]
    assert callers[0].read_text().count("_unpickle(") == 2  # its definition and its one call, in convert_pickle


def test_the_pickle_finder_finds_them(tmp_path):
    """The check above can fail: each way of reading a pickle is found."""
    code = "import pickle\nfrom joblib import load\nimport torch\ntorch.load(p)\nnp.load(p, allow_pickle=True)\npd.read_pickle(p)\n"
    (tmp_path / "m.py").write_text(code + "torch.load(p, weights_only=True)\nfrom joblib import Parallel, delayed\n")
    assert [line for line, _ in _pickle_reads(tmp_path / "m.py")] == [1, 2, 4, 5, 6]


def test_the_legacy_cache_converts_on_confirmation_and_is_resealed(tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    shutil.copytree(LEGACY, cache)
    monkeypatch.setenv("CLINBENCH_CACHE", str(cache))
    from engine import api

    evals, _ = api.evaluations()
    logreg = next(e for e in evals if e.method == "logreg")
    assert api.pickled(evals) == evals
    with pytest.raises(PickledClassifier, match=logreg.key[:10]):
        api.load_classifier(logreg.folder)
    old = artifacts.read_manifest(logreg.folder)
    assert sorted(api.convert_pickles(evals)) == sorted(e.key for e in evals) and api.pickled(evals) == []
    assert api.convert_pickles(evals) == []  # nothing left to convert
    manifest = artifacts.read_manifest(logreg.folder)
    assert set(manifest["files"]) == {"classifier.skops", "predictions.json"} and not (logreg.folder / "classifier.joblib").exists()
    assert manifest["converted"]["sha256"] == old["files"]["classifier.joblib"]
    assert {k: v for k, v in manifest.items() if k not in ("files", "converted")} == {k: v for k, v in old.items() if k != "files"}
    artifacts.verify_tree(logreg.folder, "")  # resealed: every file matches
    assert (logreg.folder / "manifest.sha256").exists()
    est = load_estimator(logreg.folder)
    assert type(est.named_steps["smote"]).__module__ == "engine.methods.estimators"  # pickled as engine.methods.AdaptiveSMOTE
    assert json.loads((logreg.folder / "predictions.json").read_text()) == json.loads(
        (LEGACY / "evaluations" / logreg.key / "predictions.json").read_text()
    )


def test_the_classify_page_converts_pickles_on_its_button(tmp_path, monkeypatch):
    from streamlit.testing.v1 import AppTest

    from engine import api

    shutil.copytree(LEGACY, tmp_path / "cache")
    monkeypatch.setenv("CLINBENCH_CACHE", str(tmp_path / "cache"))
    at = AppTest.from_file(str(ROOT / "pages" / "6_Classify.py"), default_timeout=180).run()
    assert not at.exception and any("pickles" in w.value for w in at.warning)
    assert api.pickled(api.evaluations()[0])  # nothing converted unasked
    at.button(key="convert-pickles").click().run()
    assert not at.exception and any("Converted 2" in s.value for s in at.success), [s.value for s in at.success]
    assert api.pickled(api.evaluations()[0]) == []
