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


def _client(app, host: str = "127.0.0.1") -> TestClient:
    """A test client whose requests carry `Host: <host>` (the server answers loopback's names only, by default)."""
    return TestClient(app, base_url=f"http://{host}")


@pytest.fixture
def client(stored):
    with _client(server.create_app()) as c:
        yield c


def test_health_and_classifier_list(client, stored):
    ds, svc_id, logreg_id, svc, _ = stored
    assert client.get("/health").json()["status"] == "ok"
    rows = {r["id"]: r for r in client.get("/classifiers").json()}
    assert set(rows) == {svc_id, logreg_id}
    row = rows[svc_id]
    assert row["method"] == "svc" and row["dataset"]["data_hash"] == ds.data_hash
    assert row["dataset"]["source"] == "letters.csv" and row["usable"] is True and "problem" not in row  # a file name, no folder
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
    with _client(server.create_app(max_bytes=2000)) as c:
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
    with _client(server.create_app(token="s3cret")) as c:
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
    with _client(server.create_app()) as c:
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
    cmd = [sys.executable, "-m", "engine", "serve", "--port", str(port), "--threads", "1"]
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
        with urllib.request.urlopen(base + "/health?note=Bramblewick", timeout=10) as r:
            assert r.status == 200
        foreign = urllib.request.Request(base + "/classifiers", headers={"Host": "attacker.example"})
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(foreign, timeout=10)
        assert refused.value.code == 400
    finally:
        proc.terminate()
        logs, _ = proc.communicate(timeout=30)
    assert "1 thread(s)" in logs  # --threads reached the server
    assert "POST /classify 200" in logs and "GET /health 200" in logs and "GET /classifiers 400" in logs
    assert SECRET not in logs and "Bramblewick" not in logs and "note=" not in logs  # no query strings, no client addresses
    requests = [line for line in logs.splitlines() if " /" in line and ("GET" in line or "POST" in line)]
    assert requests and not any("127.0.0.1" in line for line in requests)  # method, path, status: no client address


def test_served_answers_equal_the_extractors_vectors_through_the_estimator(client, stored, tmp_path):
    """Issue 31: a letter is embedded in memory (extract.vectors) instead of through a .npy file; the vectors, and so the
    served probabilities, are the extractor's (extract.extract, as every stored vector is made) to the bit."""
    from engine.features import extract

    ds, _, logreg_id, _, logreg = stored
    clf = classifiers.load(logreg.artifact)
    texts = [ds.texts[i] for i in (0, 7, 11)]
    extract.extract(clf.loaded, texts, tmp_path / "v.npy", pooling=clf.pooling, max_length=clf.max_length, windows=clf.windows)
    on_disk = np.load(tmp_path / "v.npy")
    assert np.array_equal(clf.embed(texts), on_disk)
    expected = clf.estimator.predict_proba(on_disk[1:2])[0]
    body = client.post("/classify", json={"text": texts[1], "classifier": logreg_id}).json()
    assert [body["scores"][c] for c in clf.classes_] == [float(p) for p in expected]
    kw = {"pooling": "mean", "max_length": 16, "windows": 3}  # long letters read in windows, pooled in memory the same way
    extract.extract(clf.loaded, texts, tmp_path / "w.npy", **kw)
    assert np.array_equal(extract.vectors(clf.loaded, texts, **kw), np.load(tmp_path / "w.npy"))


def test_threads_sets_torch_and_blas_threads_and_is_checked_at_start():
    import torch
    from threadpoolctl import threadpool_info, threadpool_limits

    from tests.conftest import cli

    before = torch.get_num_threads()
    with threadpool_limits(limits=None):  # (restores the BLAS limits on leaving)
        try:
            server.use_threads(1)
            assert torch.get_num_threads() == 1
            assert all(pool["num_threads"] == 1 for pool in threadpool_info())
        finally:
            torch.set_num_threads(before)
    r = cli("serve", "--port", "1", "--threads", "0", timeout=60)
    assert r.returncode == 2 and "--threads" in r.stderr and "between 1 and 256" in r.stderr
    assert "--threads INT" in cli("serve", "--help", timeout=60).stdout


def test_non_loopback_without_token_is_refused_at_start():
    from tests.conftest import cli

    r = cli("serve", "--host", "0.0.0.0", "--port", "1", timeout=60, env_extra={server.TOKEN_ENV: ""})
    assert r.returncode == 2 and r.stderr.startswith("error: --host 0.0.0.0") and r.stderr.count("\n") == 1


# --- issue 29: host header, meaningless letters, turns and time limits, smaller leaks --------------------------------------


@pytest.mark.parametrize("host", ["attacker.example", "attacker.example:8000", "127.0.0.1.nip.io"])
def test_a_foreign_host_header_is_refused(stored, host):
    """DNS rebinding: a page whose name now points at 127.0.0.1 sends its own name as Host; it gets 400 and no data."""
    _, svc_id, *_ = stored
    with _client(server.create_app(), host) as c:
        assert c.get("/classifiers").status_code == 400
        assert c.post("/classify", json={"text": "chest pain on exertion", "classifier": svc_id}).status_code == 400
    for name in ("127.0.0.1:8000", "localhost", "localhost:8000", "[::1]:8000"):
        with _client(server.create_app(), name) as c:
            assert c.get("/classifiers").status_code == 200, name
    hosts = server.allowed_hosts("0.0.0.0", ["clinbench.internal"])
    assert "clinbench.internal" in hosts and "0.0.0.0" not in hosts and "[::1]" in hosts
    assert "192.168.1.5" in server.allowed_hosts("192.168.1.5") and "[fd00::5]" in server.allowed_hosts("fd00::5")
    with _client(server.create_app(hosts=hosts), "clinbench.internal:8000") as c:
        assert c.get("/classifiers").status_code == 200
    for bad in ("*", "evil*.example", "http://x.example", "x.example:8000"):
        with pytest.raises(ClinBenchError, match="--allowed-host"):
            server.allowed_hosts("127.0.0.1", [bad])


@pytest.mark.parametrize("text", ["\u0000", "\u200b", "!!!", "\u200b\u200d\ufeff  \u0007", "\ud800", "chest\ud800 pain"])
def test_meaningless_or_invalid_letters_get_422_not_a_label(client, stored, text):
    _, svc_id, *_ = stored

    def post(path, body):  # JSON as any client may send it: "\ud800" escaped (valid JSON, invalid Unicode)
        return client.post(path, content=json.dumps(body), headers={"Content-Type": "application/json"})

    r = post("/classify", {"text": text, "classifier": svc_id})
    assert r.status_code == 422, r.text
    detail = r.json()["detail"]
    assert ("lone surrogate" in detail) if "\ud800" in text else ("nothing to classify" in detail or "empty" in detail)
    r = post("/classify/batch", {"texts": ["Chest pain on exertion, relieved by rest.", text], "classifier": svc_id})
    assert r.status_code == 422 and "[1]" in r.json()["detail"] and "Letter 1" in r.json()["detail"]


def test_a_short_real_letter_is_still_classified(client, stored):
    _, svc_id, *_ = stored
    r = client.post("/classify", json={"text": "\u200bECG ok\u0000", "classifier": svc_id})
    assert r.status_code == 200, r.text


def _slow(monkeypatch, app, cid: str, per_letter_s: float) -> list[int]:
    """Make classifier `cid` take `per_letter_s` per letter; the list receives the size of every piece it is asked."""
    clf = app.state.loaded.get(cid)
    real, calls = clf.predict_proba, []

    def slow(texts):
        calls.append(len(texts))
        time.sleep(per_letter_s * len(texts))
        return real(texts)

    monkeypatch.setattr(clf, "predict_proba", slow)
    return calls


def test_a_single_letter_waits_for_one_turn_of_a_batch_not_the_whole_batch(stored, monkeypatch):
    """Issue 29: during a 32-letter batch a single request waited 11.5 s. A batch now takes one turn per TURN_LETTERS letters,
    and turns go in the order they were asked for."""
    import threading

    ds, svc_id, *_ = stored
    app = server.create_app()
    with _client(app) as c:
        calls = _slow(monkeypatch, app, svc_id, 0.3)
        answers = []
        batch = threading.Thread(
            target=lambda: answers.append(c.post("/classify/batch", json={"texts": ds.texts[:16], "classifier": svc_id}))
        )
        t0 = time.monotonic()
        batch.start()
        time.sleep(0.4)  # the batch is in its first turn
        t1 = time.monotonic()
        single = c.post("/classify", json={"text": ds.texts[20], "classifier": svc_id})
        waited = time.monotonic() - t1
        batch.join()
        whole = time.monotonic() - t0
    assert single.status_code == 200 and answers[0].status_code == 200 and len(answers[0].json()) == 16
    assert whole > 4.5 and waited < 2.5, (waited, whole)  # the batch needs 4.8 s of work; the letter waits one piece (1.2 s)
    assert calls[0] == server.TURN_LETTERS and 1 in calls and sum(calls) == 17  # the single letter took a turn between pieces


def test_a_request_out_of_time_gets_503_and_its_work_is_not_done(stored, monkeypatch):
    import threading

    ds, svc_id, *_ = stored
    app = server.create_app(timeout_s=1.0)
    with _client(app) as c:
        calls = _slow(monkeypatch, app, svc_id, 0.4)
        answers = []
        batch = threading.Thread(
            target=lambda: answers.append(c.post("/classify/batch", json={"texts": ds.texts[:8], "classifier": svc_id}))
        )
        batch.start()
        time.sleep(0.3)
        single = c.post("/classify", json={"text": ds.texts[20], "classifier": svc_id})  # waits behind a 1.6 s turn: out of time
        batch.join()
    for r in (single, answers[0]):
        assert r.status_code == 503 and "--timeout" in r.json()["detail"] and int(r.headers["retry-after"]) >= 1
    assert calls == [server.TURN_LETTERS]  # the batch stopped after its first turn; the single letter never ran


def test_a_request_whose_client_left_is_dropped_before_its_turn():
    import asyncio
    import threading

    class Left:
        async def is_disconnected(self):
            return True

    async def main():
        turns, ran, gate = server.Turns(), [], threading.Event()
        far = time.monotonic() + 30
        holder = asyncio.ensure_future(turns.run(gate.wait, 10, request=None, deadline=far))
        await asyncio.sleep(0.1)
        with pytest.raises(server.Gone):
            await turns.run(ran.append, "left", request=Left(), deadline=far)
        with pytest.raises(server.TimedOut):
            await turns.run(ran.append, "late", request=None, deadline=time.monotonic() + 0.2)
        gate.set()
        assert await holder is True
        await turns.run(ran.append, "next", request=None, deadline=far)
        return ran

    assert asyncio.run(main()) == ["next"]  # neither the departed nor the late request ran; the turn was handed on


def test_a_batch_over_the_character_limit_gets_413(stored):
    _, svc_id, *_ = stored
    with _client(server.create_app(max_batch_chars=1000)) as c:
        r = c.post("/classify/batch", json={"texts": ["chest pain " * 60, "headache " * 60], "classifier": svc_id})
        assert r.status_code == 413 and "--max-batch-chars" in r.json()["detail"] and "1200 characters" in r.json()["detail"]
        assert c.post("/classify/batch", json={"texts": ["chest pain " * 60], "classifier": svc_id}).status_code == 200


def test_no_answer_names_a_folder_of_the_server_and_damaged_classifiers_are_listed_unusable(stored_cache, tmp_path, monkeypatch):
    import shutil

    cache = tmp_path / "server-cache"
    shutil.copytree(stored_cache[0], cache)
    monkeypatch.setenv("CLINBENCH_CACHE", str(cache))
    svc_id = Path(stored_cache[2][0].artifact).name
    with open(cache / "evaluations" / svc_id / "classifier.skops", "ab") as fh:
        fh.write(b"tampered")
    with _client(server.create_app()) as c:
        r = c.post("/classify", json={"text": "Chest pain on exertion.", "classifier": svc_id})
        assert r.status_code == 409 and "does not match the hash" in r.json()["detail"]
        listed = {row["id"]: row for row in c.get("/classifiers").json()}
    assert listed[svc_id]["usable"] is False and "does not match the hash" in listed[svc_id]["problem"]
    assert sum(row["usable"] for row in listed.values()) == len(listed) - 1
    for text in (r.text, json.dumps(listed)):
        assert str(tmp_path) not in text and str(cache) not in text and "evaluations/" + svc_id in text


def test_public_messages_keep_file_names_but_no_folders(monkeypatch, tmp_path):
    monkeypatch.setenv("CLINBENCH_CACHE", str(tmp_path / "c"))
    root = str((tmp_path / "c").resolve())
    msg = server.public(f"{root}/evaluations/abc/classifier.skops changed; model /home/ann/models/bert/config.json; GET /classifiers")
    assert msg == "evaluations/abc/classifier.skops changed; model config.json; GET /classifiers"


def test_the_token_comes_from_a_file_or_the_environment_and_a_command_line_token_is_warned_about(tmp_path, monkeypatch, capsys):
    monkeypatch.delenv(server.TOKEN_ENV, raising=False)
    assert server.read_token(None, None) is None
    monkeypatch.setenv(server.TOKEN_ENV, "from-env")
    assert server.read_token(None, None) == "from-env" and capsys.readouterr().err == ""
    path = tmp_path / "token"
    path.write_text("from-file\n")
    assert server.read_token(None, path) == "from-file" and capsys.readouterr().err == ""
    assert server.read_token("on-the-line", None) == "on-the-line"
    assert "visible to every user" in capsys.readouterr().err
    path.write_text("  \n")
    for token, file, needle in ((None, path, "is empty"), ("x", path, "not both"), (None, tmp_path / "none", "cannot be read")):
        with pytest.raises(ClinBenchError, match=needle):
            server.read_token(token, file)
