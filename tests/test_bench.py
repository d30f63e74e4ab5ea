"""The benchmarks' own logic: the extraction bench's attention bound and scale mode, the default comparison's report, the
SVC calibration comparison."""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def bench_extract():
    sys.path.insert(0, str(ROOT / "bench"))
    try:
        yield importlib.import_module("extract")
    finally:
        sys.path.remove(str(ROOT / "bench"))


@pytest.mark.parametrize("fixture", ["tiny_encoder", "tiny_decoder"])
def test_attention_timing_sees_every_layer_of_every_batch(bench_extract, fixture, request, default_ds, tmp_path, monkeypatch):
    import torch.nn.functional as F

    from engine.features import extract
    from engine.models import catalog

    monkeypatch.setattr(bench_extract, "wait_quiet", lambda *a, **k: None)  # no waiting for a quiet machine in tests
    loaded = catalog.load(str(request.getfixturevalue(fixture)))
    texts = list(default_ds.texts[:40])
    original = F.scaled_dot_product_attention
    out = bench_extract.run_engine(loaded, texts, tmp_path)  # warm-up pass untimed, then the timed pass
    assert F.scaled_dot_product_attention is original  # the hook is removed again
    ids, _ = extract.tokenize(loaded.tokenizer, texts, bench_extract.MAX_LENGTH)
    n_batches = len(extract.plan_batches([len(x) for x in ids], extract.default_batch_tokens("cpu")))
    assert out["attention_calls"] == n_batches * loaded.model.config.num_hidden_layers
    assert 0 < out["attention_seconds"] < out["seconds"]
    assert out["tokens"] == sum(len(x) for x in ids)


def test_scale_mode_letters_all_differ_and_the_rss_sampler_sees_the_process(bench_extract, tmp_path):
    csv = tmp_path / "mts.csv"
    csv.write_text('transcription\n"first letter"\n""\n"second letter"\n')
    letters = bench_extract.scale_letters(csv, 5)
    assert len(letters) == len(set(letters)) == 5 and letters[2].startswith("first letter")  # repeated, numbered
    before = bench_extract.rss_bytes()
    with bench_extract.RssSampler(every=0.01) as sampler:
        block = b"\x01" * (64 * 2**20)  # written, so resident
    assert sampler.peak >= before + 48 * 2**20 and len(sampler.samples) >= 2 and len(block)


def test_onnx_runtime_mode_is_skipped_with_a_message_without_onnxruntime(bench_extract, monkeypatch, capsys):
    import builtins

    real_import = builtins.__import__

    def no_onnxruntime(name, *args, **kwargs):
        if name.startswith("onnxruntime"):
            raise ImportError(f"No module named {name!r}")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_onnxruntime)
    assert bench_extract.main(["--runtime", "onnx"]) == 0
    assert "--runtime onnx: skipped, onnxruntime is not importable" in capsys.readouterr().out


def test_min_cosine_is_the_worst_row(bench_extract):
    import numpy as np

    a = np.array([[1.0, 0.0], [1.0, 1.0]])
    assert bench_extract._min_cosine(a, a) == pytest.approx(1.0)
    assert bench_extract._min_cosine(a, np.array([[1.0, 0.0], [1.0, -1.0]])) == pytest.approx(0.0, abs=1e-12)


def test_default_comparison_report_splits_the_total_into_steps_and_the_rest(monkeypatch, tmp_path):
    import json
    from types import SimpleNamespace

    from engine.runs.states import Status

    sys.path.insert(0, str(ROOT / "bench"))
    try:
        bench = importlib.import_module("default_comparison")
    finally:
        sys.path.remove(str(ROOT / "bench"))

    def step(model, started, finished, hit, embed_s=None):
        result = {"macro_f1": 0.9, "embed_cache_hit": hit}
        if embed_s is not None:  # the step's artifact, whose manifest has its extraction's seconds
            (tmp_path / model).mkdir()
            (tmp_path / model / "manifest.json").write_text(json.dumps({"timings": {"embed_s": embed_s, "fit_s": 3.0}}))
            result["artifact"] = str(tmp_path / model)
        return SimpleNamespace(model=model, method="svc", status=Status.DONE, started=started, finished=finished, result=result, error=None)

    run = SimpleNamespace(id=7, steps=[step("minilm", 101.0, 131.0, False, embed_s=20.0), step("smollm2", 132.0, 142.0, True)])
    monkeypatch.setenv("CLINBENCH_STEP_HOST", "fresh")
    rep = bench._report(run, "worker", submitted_wall=100.0, total_s=50.0, load_before=[1, 1, 1], load_after=[2, 2, 2])
    assert rep["in_steps_s"] == 40.0 and rep["outside_steps_s"] == 10.0
    assert [s["share"] for s in rep["steps"]] == [0.6, 0.2] and [s["queued_s"] for s in rep["steps"]] == [1.0, 32.0]
    assert rep["steps"][1]["embed_cache_hit"] is True and rep["run_id"] == 7 and rep["step_host"] == "fresh"
    assert rep["extraction_s"] == 20.0 and rep["outside_extraction_s"] == 30.0 and rep["outside_extraction_share"] == 0.6


def _gpu_bench(*args: str, timeout: float = 120):
    import subprocess

    return subprocess.run([sys.executable, str(ROOT / "bench" / "gpu.py"), *args], capture_output=True, text=True, timeout=timeout)


def test_gpu_bench_says_no_cuda_device_and_exits_0_on_a_cpu_machine(tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("a CUDA machine runs the measurements")
    out = _gpu_bench("--json", str(tmp_path / "gpu.json"))
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("no CUDA device") and not (tmp_path / "gpu.json").exists()


@pytest.mark.slow
def test_gpu_bench_cpu_check_runs_every_row_of_the_gpu_path(tmp_path):
    """The GPU path's code on the CPU (a few letters, a tiny random model for the 1B one): every row runs and is written."""
    out = _gpu_bench("--cpu-check", "--json", str(tmp_path / "gpu.json"), timeout=900)
    assert out.returncode == 0, out.stderr[-2000:]
    import json

    report = json.loads((tmp_path / "gpu.json").read_text())
    rows = [(r["row"], r["model"].split()[0]) for r in report["rows"]]
    assert rows == [
        ("extract", "minilm"),
        ("extract", "smollm2"),
        ("lora epoch", "minilm"),
        ("lora epoch", "smollm2"),
        ("zero-shot", "smollm2"),
        ("instruct-lora", "smollm2"),
        ("extract", "random"),
        ("lora epoch", "random"),
        ("lora epoch + checkpointing", "random"),
    ]
    assert report["cpu_check"] and all(r["tokens_per_s"] > 0 for r in report["rows"] if "tokens_per_s" in r)


def test_svc_calibration_bench_scores_both_calibrations_of_one_searched_svc():
    import numpy as np

    from bench import svc_calibration

    rng = np.random.default_rng(0)
    sizes = [60, 30, 10, 10, 10]
    X = np.vstack([rng.normal(loc=1.2 * k, size=(n, 8)) for k, n in enumerate(sizes)])
    y = np.repeat([f"c{k}" for k in range(len(sizes))], sizes)
    test = np.arange(0, len(y), 4)
    train = np.setdiff1d(np.arange(len(y)), test)
    row = svc_calibration.fold_row(X, y, np.arange(len(y)), train, test)
    assert row["n_train"] == len(train) and row["n_test"] == len(test) and "clf__C" in row["best_params"]
    for m in ("sigmoid", "temperature"):
        s = row[m]
        assert 0 <= s["macro_f1"] <= 1 and 0 < s["accuracy"] <= 1 and 0 <= s["brier"] <= 2 and s["log_loss"] > 0
    assert row["temperature"]["is_svc_answer"] >= 0.95  # one temperature keeps the order of the decision values
