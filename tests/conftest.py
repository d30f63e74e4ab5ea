"""Shared fixtures: an isolated cache folder, tiny random models, small datasets."""

from __future__ import annotations

import contextlib
import csv
import os
import re
import tempfile
from collections import Counter
from pathlib import Path

import pytest

# Every test session writes into its own cache, never into the repo's cache/.
_SESSION_CACHE = tempfile.mkdtemp(prefix="clinbench-test-cache-")
os.environ["CLINBENCH_CACHE"] = _SESSION_CACHE
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# pytest-xdist runs one test process per core: each gets its share of the cores, so that torch's threads (and those of the
# `python -m engine` processes a test starts) do not fight over them; one process running the suite keeps every core.
_XDIST_WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
if _XDIST_WORKERS > 1:
    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // _XDIST_WORKERS)))
# One BLAS thread per process (inherited by the CLI, workers and steps the tests start): the suite runs several processes
# per core (xdist, workers, steps), and OpenBLAS's threads spinning for a busy core made a 60-letter tf-idf fit 30-60x
# slower (3 s instead of 0.09 s per LogisticRegression fit on 2 loaded cores). Set before numpy is imported.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
# A model folder's own code (trust_remote_code) is copied here when imported, not into the user's Hugging Face cache.
os.environ["HF_MODULES_CACHE"] = tempfile.mkdtemp(prefix="clinbench-test-hf-modules-")

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT.parent / "shared" / "data"
# Each test's fresh cache links the SmolLM2 conversion that scripts/setup.sh made in the repo's cache (models --prepare)
# instead of converting the GGUF again in every process and cache (tests/test_models.py checks the conversion itself).
if (ROOT / "cache" / "models").is_dir():
    os.environ.setdefault("CLINBENCH_CONVERTED_MODELS", str(ROOT / "cache" / "models"))


@contextlib.contextmanager
def cache_at(folder: str | Path):
    """CLINBENCH_CACHE set to `folder` for the block, restored after it: the cache of its own that a module-scoped fixture
    fills once (such a fixture cannot use the function-scoped monkeypatch)."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("CLINBENCH_CACHE", str(folder))
        yield Path(folder)


def stop_workers(cache: str | Path) -> None:
    """Terminate every background worker registered in the run store of `cache` and wait for it."""
    import sqlite3

    import psutil

    db = Path(cache) / "runs" / "runs.sqlite"
    if not db.exists():
        return
    with sqlite3.connect(db, timeout=30) as conn:
        pids = [r[0] for r in conn.execute("SELECT pid FROM workers")]
    procs = []
    for pid in pids:
        try:
            proc = psutil.Process(pid)
            proc.terminate()
            procs.append(proc)
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(procs, timeout=10)


def pytest_collection_modifyitems(config, items):
    """Files with slow tests first, the rest in their usual order: pytest-xdist (`--dist loadfile`) hands files out in
    this order, so the long ones start early and the short ones fill the gaps, instead of a long file running alone at
    the end while the other core idles."""
    slow_files = {item.path for item in items if item.get_closest_marker("slow")}
    items.sort(key=lambda item: item.path not in slow_files)  # a stable sort: the order within each group is kept


@pytest.fixture(scope="session", autouse=True)
def _no_worker_outlives_the_tests():
    yield
    stop_workers(_SESSION_CACHE)


def _word_tokenizer(texts: list[str], size: int = 3000):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = Counter(w for t in texts for w in re.findall(r"\w+|[^\w\s]", t.lower()))
    vocab = {"[UNK]": 0, "</s>": 1, "[CLS]": 2, "[PAD]": 3}
    for w, _ in words.most_common(size):
        vocab.setdefault(w, len(vocab))
    tk = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tk.normalizer = __import__("tokenizers").normalizers.Lowercase()
    tk.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=tk, unk_token="[UNK]", eos_token="</s>"), len(vocab)


@pytest.fixture(scope="session")
def default_ds():
    from engine.data.dataset import default_dataset

    return default_dataset()


@pytest.fixture(scope="session")
def tiny_decoder(tmp_path_factory, default_ds) -> Path:
    """A 2-layer random Llama with a word-level tokenizer that has no pad token (like many decoders)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    tok, vocab = _word_tokenizer(default_ds.texts)
    cfg = LlamaConfig(
        vocab_size=vocab,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=1024,
        eos_token_id=1,
        bos_token_id=1,
        pad_token_id=None,
    )
    folder = tmp_path_factory.mktemp("tiny-llama")
    LlamaForCausalLM(cfg).save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def tiny_encoder(tmp_path_factory, default_ds) -> Path:
    """A 2-layer random BERT with a word-level tokenizer."""
    import torch
    from transformers import BertConfig, BertForMaskedLM

    torch.manual_seed(0)
    tok, vocab = _word_tokenizer(default_ds.texts)
    tok.pad_token, tok.cls_token = "[PAD]", "[CLS]"
    cfg = BertConfig(
        vocab_size=vocab,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=512,
        pad_token_id=3,
    )
    folder = tmp_path_factory.mktemp("tiny-bert")
    BertForMaskedLM(cfg).save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory, default_ds):
    """`tiny_model(arch)`: the folder of a tiny random model of one architecture (tests/tiny_models.py), built on first use
    and kept for the session."""
    from tests.tiny_models import build

    built: dict[str, Path] = {}

    def get(arch: str) -> Path:
        if arch not in built:
            built[arch] = build(arch, tmp_path_factory.mktemp(f"tiny-{arch}"), default_ds.texts)
        return built[arch]

    return get


def cli(*args, timeout: float = 300, env_extra: dict | None = None, in_process: bool = False):
    """`python -m engine ARGS` as a user runs it (this session's cache, plus `env_extra`); the CompletedProcess.
    `in_process`: the entry point's own function (engine.cli.parser.main, which `python -m engine` exits with) called in
    this process, its output captured: the same status and messages without a new interpreter's imports (about a second
    a call), for commands that are refused or are quick. An exception main() does not turn into a message propagates (as
    a traceback would end the real command); `timeout` does not apply (pytest-timeout bounds the test). The real entry
    point stays covered by the tests that run it."""
    import subprocess
    import sys

    if in_process:
        return _cli_here(list(args), env_extra or {})
    env = {**os.environ, **(env_extra or {})}
    return subprocess.run([sys.executable, "-m", "engine", *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout, env=env)


def _cli_here(argv: list[str], env_extra: dict):
    import io
    import subprocess

    from engine.cli.parser import main

    out, err = io.StringIO(), io.StringIO()
    with pytest.MonkeyPatch.context() as mp, contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        for name, value in env_extra.items():
            mp.setenv(name, value)
        mp.chdir(ROOT)
        try:
            code = main(argv)
        except SystemExit as exc:  # argparse's refusals (status 2) and --help (0)
            code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    return subprocess.CompletedProcess(["python", "-m", "engine", *argv], code, out.getvalue(), err.getvalue())


def evaluate_cli(csv, model, *extra, **kw):
    """`python -m engine evaluate` on a small_csv-style file (columns letter, specialty) with one model."""
    return cli(
        "evaluate", "--data", str(csv), "--text-column", "letter", "--label-column", "specialty", "--model", str(model), *extra, **kw
    )


def write_csv(path: Path, rows: list[dict], fieldnames: list[str] | None = None) -> Path:
    fieldnames = fieldnames or list(rows[0])
    with path.open("w", newline="", encoding="utf-8") as fh:
        w = csv.DictWriter(fh, fieldnames=fieldnames)
        w.writeheader()
        w.writerows(rows)
    return path


@pytest.fixture
def small_csv(tmp_path, default_ds) -> Path:
    """60 real letters (12 per label) from the default dataset, as a user's CSV."""
    per = Counter()
    rows = []
    for t, lab in zip(default_ds.texts, default_ds.labels):
        if per[lab] < 12:
            per[lab] += 1
            rows.append({"letter": t, "specialty": lab})
    return write_csv(tmp_path / "letters.csv", rows)


def run_step(ds, model, method: str, ctx=None, **options):
    """Execute one step (model x method) on a loaded dataset in this process, as a run's worker would."""
    from engine.options.groups import Options
    from engine.runs import experiment

    spec = experiment.Spec("test", experiment.DataSpec(), [str(model)], [method], Options.parse(options))
    return experiment.execute(spec, spec.steps(reference=False)[0], dataset=ds, ctx=ctx)


@pytest.fixture
def cache(tmp_path, monkeypatch):
    """An empty cache folder of its own for one test."""
    monkeypatch.setenv("CLINBENCH_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


@pytest.fixture
def two_evals(cache, small_csv, tiny_encoder):
    """svc and logreg of the tiny encoder on 60 real letters, stored in the test's cache."""
    from engine.runs import experiment

    ds = experiment.DataSpec(str(small_csv), "letter", "specialty").load()
    return ds, [run_step(ds, tiny_encoder, m, max_length=64, grid=False, n_boot=100) for m in ("svc", "logreg")]
