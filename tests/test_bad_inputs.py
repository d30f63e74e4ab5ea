"""Input validation at the door (issue 16): each bad input is a one-line ClinBenchError before any work starts,
from the CLI (`error: ...`, status 2, no traceback) and from the engine API (submit, evaluate)."""

from __future__ import annotations

import json
import os
import shutil
import time

import pytest
from conftest import cli, evaluate_cli

from engine.errors import ClinBenchError, ModelUnavailable, SpecError


def _refused(out, *needles: str) -> str:
    """The CLI refused cleanly: status 2, one `error:` line naming every needle, no traceback."""
    assert out.returncode == 2, out.stderr[-2000:]
    assert "Traceback" not in out.stderr and "Unexpected error" not in out.stderr, out.stderr[-2000:]
    err = out.stderr.strip()
    assert err.startswith("error: "), err
    for n in needles:
        assert n in err, err
    return err


def _spec(tmp_path, small_csv, models, methods=("logreg",), **options) -> dict:
    return {
        "name": "bad-input",
        "data": {"path": str(small_csv), "text_column": "letter", "label_column": "specialty"},
        "models": [str(m) for m in models],
        "methods": list(methods),
        "options": {"max_length": 64, "grid": False, **options},
    }


# --- options: seed, n_boot, max_length --------------------------------------------------------------


def test_negative_seed_is_refused(small_csv):
    _refused(evaluate_cli(small_csv, "tfidf", "--seed", "-1"), "--seed", "at least 0")


@pytest.mark.parametrize("n", ["0", "50"])
def test_too_few_bootstrap_resamples_are_refused(small_csv, n):
    """0 resamples would give no CI (and NaN bounds downstream): the minimum is 100, with a message that says so."""
    _refused(evaluate_cli(small_csv, "tfidf", "--n-boot", n), "--n-boot", "at least 100")
    with pytest.raises(SpecError, match="n_boot"):
        from engine.options import Options

        Options.parse({"n_boot": int(n)})


@pytest.mark.parametrize("n", ["0", "-5"])
def test_embed_max_length_out_of_range_is_refused(small_csv, tiny_encoder, n):
    out = cli(
        "embed", "--data", str(small_csv), "--text-column", "letter", "--label-column", "specialty", "--model", str(tiny_encoder),
        "--max-length", n,
    )  # fmt: skip
    _refused(out, "--max-length", "at least 8")


# --- LoRA target modules -----------------------------------------------------------------------------


def test_unknown_lora_target_module_is_refused_before_training(small_csv, tiny_encoder):
    t0 = time.monotonic()
    out = evaluate_cli(small_csv, tiny_encoder, "--method", "lora", "--target-modules", "nosuch", "--max-length", "64", "--epochs", "1")
    err = _refused(out, "nosuch", "query")  # names the bad module and some of the model's linear modules
    assert "\n" not in err
    assert time.monotonic() - t0 < 60


def test_unknown_lora_target_module_is_refused_at_submit(cache, tmp_path, small_csv, tiny_encoder):
    from engine import api

    with pytest.raises(ClinBenchError, match="nosuch") as exc:
        api.submit(_spec(tmp_path, small_csv, [tiny_encoder], ["lora"], target_modules=["nosuch"]), start_worker=False)
    assert "query" in str(exc.value)
    assert api.list_runs() == []


# --- spec files ------------------------------------------------------------------------------------


def test_spec_that_is_a_folder(tmp_path):
    folder = tmp_path / "spec.yaml"
    folder.mkdir()
    _refused(cli("submit", str(folder), "--no-worker"), "spec.yaml", "folder")


def test_spec_that_is_not_utf8(tmp_path):
    path = tmp_path / "latin1.yaml"
    path.write_bytes("name: caf\xe9\nmodels: [tfidf]\n".encode("latin-1"))
    _refused(cli("submit", str(path), "--no-worker"), "latin1.yaml", "UTF-8")


def test_yaml_alias_bomb_fails_fast(tmp_path):
    lines = ['a0: &a0 ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    lines += [f"a{i}: &a{i} [" + ",".join([f"*a{i - 1}"] * 9) + "]" for i in range(1, 10)]
    path = tmp_path / "bomb.yaml"
    path.write_text("\n".join(lines) + "\nname: *a9\nmodels: [tfidf]\n", encoding="utf-8")
    from engine import experiment

    t0 = time.monotonic()
    with pytest.raises(SpecError, match=r"bomb\.yaml") as exc:
        experiment.load_spec(path)
    assert time.monotonic() - t0 < 2
    assert "alias" in str(exc.value)
    _refused(cli("submit", str(path), "--no-worker", timeout=60), "bomb.yaml")


def test_spec_larger_than_a_megabyte(tmp_path):
    path = tmp_path / "big.yaml"
    path.write_text("name: big\nmodels: [tfidf]\n# " + "x" * 1_100_000 + "\n", encoding="utf-8")
    from engine import experiment

    with pytest.raises(SpecError, match=r"big\.yaml.*1 MB"):
        experiment.load_spec(path)


def test_spec_name_must_be_text(tmp_path, small_csv):
    from engine import experiment

    with pytest.raises(SpecError, match="name"):
        experiment.parse_spec({"name": [["a"] * 3], "models": ["tfidf"]})


# --- garbage model folders ---------------------------------------------------------------------------


@pytest.fixture
def garbage_weights(tmp_path, tiny_encoder):
    folder = tmp_path / "garbage-weights"
    shutil.copytree(tiny_encoder, folder)
    (folder / "model.safetensors").write_bytes(os.urandom(4096))
    return folder


@pytest.fixture
def garbage_config(tmp_path, tiny_encoder):
    folder = tmp_path / "garbage-config"
    shutil.copytree(tiny_encoder, folder)
    (folder / "config.json").write_text("this is not { json", encoding="utf-8")
    return folder


@pytest.mark.parametrize(("which", "file"), [("garbage_weights", "model.safetensors"), ("garbage_config", "config.json")])
def test_garbage_model_folder_is_refused_at_submit(request, cache, tmp_path, small_csv, which, file):
    from engine import api

    folder = request.getfixturevalue(which)
    with pytest.raises(ModelUnavailable) as exc:
        api.submit(_spec(tmp_path, small_csv, [folder]), start_worker=False)
    msg = str(exc.value)
    assert str(folder) in msg and file in msg and "\n" not in msg
    assert api.list_runs() == []


@pytest.mark.parametrize(("which", "file"), [("garbage_weights", "model.safetensors"), ("garbage_config", "config.json")])
def test_garbage_model_folder_is_refused_by_evaluate(request, small_csv, which, file):
    folder = request.getfixturevalue(which)
    _refused(evaluate_cli(small_csv, folder, "--max-length", "64", "--no-grid"), str(folder), file)


# --- hub ids while offline ----------------------------------------------------------------------------


@pytest.mark.parametrize("offline", ["1", "0"])
def test_hub_id_offline_is_refused_at_submit_within_2s(monkeypatch, cache, tmp_path, small_csv, offline):
    """The machine has no internet: with or without HF_HUB_OFFLINE, submit refuses a hub id that is not cached."""
    from engine import api, models

    monkeypatch.setenv("HF_HUB_OFFLINE", offline)
    spec = _spec(tmp_path, small_csv, ["clinbench-test/not-cached"])
    models.check_available("minilm")  # (warm the imports, as a running dashboard has them)
    t0 = time.monotonic()
    with pytest.raises(ModelUnavailable) as exc:
        api.submit(spec, start_worker=False)
    elapsed = time.monotonic() - t0
    assert elapsed < 2.0, f"took {elapsed:.2f}s"
    assert "clinbench-test/not-cached" in str(exc.value) and "bundled model" in str(exc.value)
    assert api.list_runs() == []


def test_hub_id_offline_is_refused_by_cli_submit(tmp_path, small_csv):
    path = tmp_path / "hub.json"
    path.write_text(json.dumps(_spec(tmp_path, small_csv, ["clinbench-test/not-cached"])), encoding="utf-8")
    _refused(cli("submit", str(path), "--no-worker", timeout=60), "clinbench-test/not-cached")


@pytest.mark.parametrize("max_length", [0, -5])
def test_api_embed_checks_max_length_like_the_options(max_length):
    from engine import api
    from engine.errors import SpecError

    with pytest.raises(SpecError, match=f"option max_length = {max_length} is out of range"):
        api.embed("minilm", ["a letter"], pooling="mean", max_length=max_length)
