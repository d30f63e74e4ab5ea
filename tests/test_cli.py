"""The CLI as a user runs it: help, validation report, clear errors (status 2), evaluate --json keys, run --json."""

from __future__ import annotations

import json

from tests.conftest import cli, evaluate_cli


def test_cli_help_lists_commands():
    out = cli("--help")
    assert out.returncode == 0
    for cmd in ("models", "data", "embed", "evaluate", "run", "submit", "runs", "worker"):
        assert cmd in out.stdout


def test_cli_validate_reports_errors(tmp_path):
    bad = tmp_path / "bad.csv"
    bad.write_text("text,label\nsome letter,a\n,b\nother,b\n")
    out = cli("data", "validate", str(bad))
    assert out.returncode == 1
    assert "empty or missing text" in out.stdout and "rows 2" in out.stdout and "'a' (row 1)" in out.stdout
    out = cli("data", "validate", str(bad), "--text-column", "body")
    assert out.returncode == 1 and "'body' not found" in out.stdout


def test_cli_clear_errors_exit_2(tmp_path):
    out = cli("evaluate", "--data", str(tmp_path / "none.csv"), "--model", "minilm")
    assert out.returncode == 2 and out.stderr.startswith("error: File not found") and "Traceback" not in out.stderr
    out = cli("evaluate", "--data", "default", "--model", "minilm", "--method", "forest")
    assert out.returncode == 2 and "unknown method 'forest'" in out.stderr
    spec = tmp_path / "s.yaml"
    spec.write_text("models: [minilm\n")
    out = cli("run", str(spec))
    assert out.returncode == 2 and "not valid YAML" in out.stderr


def test_cli_evaluate_json_keys(tiny_encoder, small_csv, tmp_path):
    out_json = tmp_path / "m.json"
    out = evaluate_cli(
        small_csv,
        tiny_encoder,
        "--max-length",
        "64",
        "--method",
        "logreg",
        "--json",
        str(out_json),
    )
    assert out.returncode == 0, out.stderr
    m = json.loads(out_json.read_text())
    for key in ("macro_f1", "macro_f1_ci", "per_class", "confusion_matrix"):
        assert key in m
    assert len(m["macro_f1_ci"]) == 2 and m["macro_f1_ci"][0] <= m["macro_f1"] <= m["macro_f1_ci"][1]
    assert "macro-F1" in out.stdout and "majority baseline" in out.stdout


def broken_tokenizer(tiny_encoder, tmp_path):
    """A model folder that passes submit's checks (config and weights read) and fails when its step loads it."""
    import shutil

    folder = shutil.copytree(tiny_encoder, tmp_path / "broken-tokenizer")
    (folder / "tokenizer.json").write_text("not a tokenizer", encoding="utf-8")
    return str(folder)


def test_cli_run_spec_keeps_going_after_a_failed_step(tiny_encoder, small_csv, tmp_path):
    spec = tmp_path / "s.json"
    broken = broken_tokenizer(tiny_encoder, tmp_path)
    spec.write_text(
        json.dumps(
            {
                "name": "t",
                "data": {"path": str(small_csv), "text_column": "letter", "label_column": "specialty"},
                "models": [str(tiny_encoder), broken],
                "methods": ["logreg"],
                "options": {"max_length": 64, "grid": False},
            }
        )
    )
    out = cli("run", str(spec), "--json", str(tmp_path / "r.json"))
    assert out.returncode == 1
    results = json.loads((tmp_path / "r.json").read_text())
    assert "macro_f1" in results[0] and "error" in results[1] and "broken-tokenizer" in results[1]["error"]
    assert len(results) == 3 and "macro_f1" in results[2], "the tf-idf reference step ends the run"
