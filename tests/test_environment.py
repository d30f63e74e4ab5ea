"""What manifests record of the machine and the packages (engine.options.config.environment, package_versions)."""

from __future__ import annotations

import json
import subprocess

import engine
from engine.options import config


def test_package_versions_cover_the_packages_that_decide_the_numbers():
    versions = config.package_versions()
    for name in ("python", "torch", "transformers", "tokenizers", "scikit-learn", "numpy", "scipy", "datasketch"):
        assert isinstance(versions[name], str) and versions[name]


def test_a_missing_package_reads_not_installed(monkeypatch):
    monkeypatch.setattr(config, "_VERSIONED", ("no-such-package-clinbench",))
    assert config.package_versions()["no-such-package-clinbench"] == "not installed"


def test_environment_names_the_version_machine_and_commit():
    env = config.environment()
    assert set(env) == {"clinbench", "git_commit", "python", "platform", "cpu", "n_cpus", "gpu"}
    assert env["clinbench"] == engine.__version__
    assert isinstance(env["n_cpus"], int) and env["n_cpus"] >= 1
    assert isinstance(env["cpu"], str) and isinstance(env["platform"], str) and env["platform"]
    assert env["gpu"] is None or isinstance(env["gpu"], str)
    json.dumps(env)  # goes into manifests as it is
    assert config.environment() is env  # computed once per process


def test_git_commit_is_head_with_dirty_suffix_or_none():
    commit = config.environment()["git_commit"]
    head = subprocess.run(["git", "-C", str(config.REPO_ROOT), "rev-parse", "HEAD"], capture_output=True, text=True)
    if head.returncode != 0:
        assert commit is None
    else:
        assert commit in (head.stdout.strip(), head.stdout.strip() + "-dirty")


def test_no_checkout_or_no_git_gives_none(monkeypatch, tmp_path):
    monkeypatch.setattr(config, "REPO_ROOT", tmp_path)  # not a git checkout
    assert config.git_commit() is None
    (tmp_path / ".git").mkdir()  # looks like one, but git cannot read it
    assert config.git_commit() is None

    def missing(*args, **kwargs):
        raise FileNotFoundError("git")

    monkeypatch.setattr(config.subprocess, "run", missing)
    assert config.git_commit() is None


def test_git_that_hangs_is_given_up_on(monkeypatch, tmp_path):
    (tmp_path / ".git").mkdir()
    monkeypatch.setattr(config, "REPO_ROOT", tmp_path)

    def slow(cmd, **kwargs):
        assert kwargs["timeout"] <= 2
        raise subprocess.TimeoutExpired(cmd, kwargs["timeout"])

    monkeypatch.setattr(config.subprocess, "run", slow)
    assert config.git_commit() is None


def test_a_dirty_checkout_is_marked(monkeypatch, tmp_path):
    (tmp_path / ".git").mkdir()
    monkeypatch.setattr(config, "REPO_ROOT", tmp_path)
    answers = {"rev-parse": "abc123\n", "status": " M engine/config.py\n"}

    def fake(cmd, **kwargs):
        return subprocess.CompletedProcess(cmd, 0, answers[cmd[3]], "")

    monkeypatch.setattr(config.subprocess, "run", fake)
    assert config.git_commit() == "abc123-dirty"
    answers["status"] = ""
    assert config.git_commit() == "abc123"
