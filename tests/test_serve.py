"""`python -m engine serve`: the HTTP endpoint over stored classifiers (FastAPI TestClient, and one real server)."""

from __future__ import annotations

import json
import logging
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient

from engine.errors import ClinBenchError
from engine.methods import classifiers
from engine.serving import server
from tests.conftest import ROOT, run_step, write_csv

SECRET = "Zyxwquartz patient Ottoline Bramblewick presented with palpitations"  # must never reach a log


@pytest.fixture(scope="module")
def stored_cache(tmp_path_factory, default_ds, tiny_encoder):
    """svc and logreg of the tiny encoder on 60 real letters (as conftest's two_evals), made once for this module."""
    from engine.runs import experiment

    folder = tmp_path_factory.mktemp("serve")
    per, rows = Counter(), []
    for t, lab in zip(default_ds.texts, default_ds.labels):
        if per[lab] < 12:
            per[lab] += 1
            rows.append({"letter": t, "specialty": lab})
    csv = write_csv(folder / "letters.csv", rows)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("CLINBENCH_CACHE", str(folder / "cache"))
        ds = experiment.DataSpec(str(csv), "letter", "specialty").load()
        evals = [run_step(ds, tiny_encoder, m, max_length=64, grid=False, n_boot=100) for m in ("svc", "logreg")]
    return folder / "cache", ds, evals


@pytest.fixture
def stored(stored_cache, monkeypatch):
    cache, ds, (svc, logreg) = stored_cache
    monkeypatch.setenv("CLINBENCH_CACHE", str(cache))
    return ds, Path(svc.artifact).name, Path(logreg.artifact).name, svc, logreg


@pytest.fixture
def client(stored):
    with TestClient(server.create_app()) as c:
        yield c


def test_health_and_classifier_list(client, stored):
    ds, svc_id, logreg_id, svc, _ = stored
    assert client.get("/health").json()["status"] == "ok"
    rows = {r["id"]: r for r in client.get("/classifiers").json()}
    assert set(rows) == {svc_id, logreg_id}
    row = rows[svc_id]
    assert row["method"] == "svc" and row["dataset"]["data_hash"] == ds.data_hash and row["dataset"]["source"]
    assert row["macro_f1"] == pytest.approx(svc.metrics["macro_f1"]) and len(row["macro_f1_ci"]) == 2
    assert row["protocol"] in ("cv", "holdout") and row["model"]
    assert row["manifest_sha256"] == (Path(svc.artifact) / "manifest.sha256").read_text().strip()
    assert client.get("/openapi.json").status_code == 200 and client.get("/docs").status_code == 404  # no CDN docs


def test_classify_matches_the_classifier_interface(client, stored):
    ds, svc_id, _, svc, _ = stored
    text = ds.texts[3]
    got = client.post("/classify", json={"text": text, "classifier": svc_id})
    assert got.status_code == 200, got.text
    body = got.json()
    assert set(body) >= {"classifier", "label", "scores", "truncated", "latency_ms"} and body["classifier"] == svc_id
    assert sum(body["scores"].values()) == pytest.approx(1.0)
    clf = classifiers.load(svc.artifact)
    expected = clf.predict_proba([text])[0]
    assert np.allclose([body["scores"][c] for c in clf.classes_], expected, atol=1e-6)
    assert body["label"] == clf.classes_[int(expected.argmax())]
    assert isinstance(body["truncated"], bool) and body["latency_ms"] > 0


def test_several_classifiers_and_batch(client, stored):
    ds, svc_id, logreg_id, *_ = stored
    body = client.post("/classify", json={"text": ds.texts[0], "classifiers": [svc_id, logreg_id]}).json()
    assert [a["classifier"] for a in body["answers"]] == [svc_id, logreg_id]
    assert body["label"] in {a["label"] for a in body["answers"]} and body["agreement"]["n"] == 2
    batch = client.post("/classify/batch", json={"texts": ds.texts[:5], "classifier": logreg_id})
    assert batch.status_code == 200, batch.text
    answers = batch.json()
    assert len(answers) == 5 and all(sum(a["scores"].values()) == pytest.approx(1.0) for a in answers)
    one = client.post("/classify", json={"text": ds.texts[2], "classifier": logreg_id}).json()
    assert answers[2]["scores"] == pytest.approx(one["scores"], abs=1e-6)


def test_unknown_id_empty_text_and_size_limit(stored):
    _, svc_id, *_ = stored
    with TestClient(server.create_app(max_bytes=2000)) as c:
        r = c.post("/classify", json={"text": "a letter", "classifier": "nope123"})
        assert r.status_code == 404 and "GET /classifiers" in r.json()["detail"]
        r = c.post("/classify", json={"text": "a letter", "classifiers": [svc_id, "../etc"]})
        assert r.status_code == 404
        r = c.post("/classify", json={"text": "   \n", "classifier": svc_id})
        assert r.status_code == 422 and "empty" in r.json()["detail"]
        r = c.post("/classify/batch", json={"texts": ["fine", ""], "classifier": svc_id})
        assert r.status_code == 422 and "empty" in r.json()["detail"]
        r = c.post("/classify", json={"text": "x" * 5000, "classifier": svc_id})
        assert r.status_code == 413 and "--max-bytes" in r.json()["detail"]
        r = c.post("/classify", json={"text": SECRET, "classifier": 7})  # a validation error never echoes the request
        assert r.status_code == 422 and SECRET not in r.text


def test_bind_check_and_bearer_token(stored):
    for host in ("127.0.0.1", "::1", "localhost"):
        server.check_bind(host, None)
    for host in ("0.0.0.0", "192.168.1.5", "example.org", "::"):
        with pytest.raises(ClinBenchError, match="--token"):
            server.check_bind(host, None)
        server.check_bind(host, "s3cret")
    _, svc_id, *_ = stored
    with TestClient(server.create_app(token="s3cret")) as c:
        assert c.get("/health").status_code == 200
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "Basic s3cret"}):
            assert c.get("/classifiers", headers=headers).status_code == 401
            assert c.post("/classify", json={"text": "x", "classifier": svc_id}, headers=headers).status_code == 401
        assert c.get("/openapi.json").status_code == 401
        good = {"Authorization": "Bearer s3cret"}
        assert c.get("/classifiers", headers=good).status_code == 200
        assert c.post("/classify", json={"text": "chest pain", "classifier": svc_id}, headers=good).status_code == 200


def test_letters_never_reach_the_logs(stored, caplog, capsys, monkeypatch):
    _, svc_id, *_ = stored
    caplog.set_level(logging.DEBUG)
    with TestClient(server.create_app()) as c:
        assert c.post("/classify", json={"text": SECRET, "classifier": svc_id}).status_code == 200
        assert c.post("/classify/batch", json={"texts": [SECRET], "classifier": "missing"}).status_code == 404

        def boom(texts):
            raise RuntimeError(f"could not read {texts[0]}")  # an exception whose message quotes the letter

        clf = c.app.state.loaded.get(svc_id)
        monkeypatch.setattr(clf, "predict_proba", boom)
        r = c.post("/classify", json={"text": SECRET, "classifier": svc_id})
        assert r.status_code == 500 and SECRET not in r.text and "RuntimeError" in r.text
    out = capsys.readouterr()
    assert "RuntimeError" in caplog.text
    assert SECRET not in caplog.text + out.out + out.err


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_real_server_over_loopback(stored, stored_cache):
    _, svc_id, *_ = stored
    cache = stored_cache[0]
    port = _free_port()
    env = {**os.environ, "CLINBENCH_CACHE": str(cache)}
    cmd = [sys.executable, "-m", "engine", "serve", "--port", str(port)]
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    base = f"http://127.0.0.1:{port}"
    try:
        for _ in range(300):
            try:
                with urllib.request.urlopen(base + "/health", timeout=2) as r:
                    assert json.load(r)["status"] == "ok"
                break
            except (urllib.error.URLError, ConnectionError):
                assert proc.poll() is None, proc.stdout.read()
                time.sleep(0.1)
        with urllib.request.urlopen(base + "/classifiers", timeout=10) as r:
            assert svc_id in [row["id"] for row in json.load(r)]
        req = urllib.request.Request(
            base + "/classify",
            data=json.dumps({"text": SECRET, "classifier": svc_id}).encode(),
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(req, timeout=60) as r:
            body = json.load(r)
        assert body["label"] in body["scores"] and sum(body["scores"].values()) == pytest.approx(1.0)
    finally:
        proc.terminate()
        logs, _ = proc.communicate(timeout=30)
    assert "POST /classify" in logs and SECRET not in logs


def test_non_loopback_without_token_is_refused_at_start():
    from tests.conftest import cli

    r = cli("serve", "--host", "0.0.0.0", "--port", "1", timeout=60)
    assert r.returncode == 2 and r.stderr.startswith("error: --host 0.0.0.0") and r.stderr.count("\n") == 1
