"""Throughput of ClinBench's embedding extractor against the alternatives and the hardware limit.

    python bench/extract.py [--quick] --json PATH
    python bench/extract.py --scale [N] [--json PATH]      # N letters (default 50,000) streamed to disk: memory and rate
    python bench/extract.py --scale N --executor ray [--ray-workers 1,2] [--json PATH]   # one extraction sharded over Ray

For MiniLM (encoder) and SmolLM2 (decoder), on the bundled default letters and, when
present, ../shared/data/mtsamples.csv (column `transcription`), it measures real
(non-padding) tokens per second of:

* engine  - `engine.features.extract.extract`: max_length 512, mean pooling, the default placement
            (bf16 on a CPU with native bf16);
* naive   - the original study's way: transformers `pipeline("feature-extraction")`, one letter
            at a time, fp32, last token, truncation at 512 (measured on a subset of letters);
* st      - sentence-transformers `SentenceTransformer(<minilm folder>).encode` in bf16 with
            max_seq_length 512 and its default batch size (MiniLM only);
* limit   - the physical limit: the peak bf16 matmul FLOP/s measured in this run (square
            matmuls, same thread count) divided by the FLOPs per token,
            2 x non-embedding parameters + 4 x layers x hidden x mean tokens per letter.
* bound   - what an extractor could reach with PyTorch's CPU attention kernel on these batches:
            the engine's timed pass also times every `scaled_dot_product_attention` call (the
            kernel the model runs, on the engine's real batch shapes); the bound counts that time
            plus the linear layers at the measured matmul peak, and nothing else. Softmax over each
            letter's tokens squared is not in the limit's FLOP count; this shows what it costs.

Scale mode (--scale N): `engine.features.extract.extract` (MiniLM, max_length 512, mean pooling, the default placement)
on N letters - the MTSamples transcriptions repeated, each with a counter appended so no two texts are equal - into a
.npy in a fresh temporary cache. A thread samples this process's RSS every 0.5 s (psutil, else /proc/self/status);
it prints the RSS before the letters exist, with the letters in memory, with the model loaded, and the peak during
the extraction (and getrusage's maxrss), the tokenising seconds, and letters/s and tokens/s over each tenth of the
letters (and at least every minute), so a rate that decays or memory that grows with N shows. The target: a peak under
3 GB at 50,000 letters. --seconds S stops the extraction after S seconds (cancelled as a run is; no vectors kept):
every letter is still tokenised and planned up front, so the part of the memory that grows with N is measured in full,
and the rate over the letters done.

Ray scale mode (--scale N --executor ray): the same N letters, one extraction (`engine.features.extract.embed`, MiniLM,
max_length 512, mean pooling, the default placement) run as a Ray step does (engine.runs.ray_shards): a Ray task with one
CPU (one torch thread) that embeds its share of the chunks and sends the others to shards - 1 more such tasks, on a new
local Ray instance with as many CPUs as workers; then merges them into the cached array. For each worker count
(--ray-workers, default 1,2; --chunk-rows letters per chunk, default 512), and as the reference the same extraction in this process with one thread (no Ray), it
prints seconds, letters/s, tokens/s, the speed-up over one Ray worker, and whether the array equals the reference's bit
for bit. Each row starts in a fresh cache; Ray's start-up is not timed, the model loads in the tasks are. Letters from
MTSamples when present, else the bundled default letters, repeated and numbered.

Every method's tokens are counted the same way (the tokenizer's counts, truncated at 512).
Each timing follows warm-up passes. The machine may be shared: before each timing the
script waits (a while) for the CPUs to be quiet, and it reports the CPU time other
processes used during each timing, so a disturbed number can be recognised.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("CLINBENCH_CACHE", tempfile.mkdtemp(prefix="clinbench-bench-"))  # keep the repo cache clean

import numpy as np  # noqa: E402
import torch  # noqa: E402

from engine.data import dataset  # noqa: E402
from engine.features import extract  # noqa: E402
from engine.models import catalog  # noqa: E402
from engine.models.devices import choose  # noqa: E402

MAX_LENGTH = 512
MTSAMPLES = ROOT.parent / "shared" / "data" / "mtsamples.csv"
TARGETS = {  # (model, metric): minimum
    ("minilm", "speedup_vs_naive"): 5.0,
    ("minilm", "speedup_vs_st"): 1.5,
    ("minilm", "fraction_of_limit"): 0.5,
    ("smollm2", "speedup_vs_naive"): 5.0,
    ("smollm2", "fraction_of_limit"): 0.6,
}


# --- measuring under a possibly shared machine ---------------------------------

from _machine import cpu_snapshot, wait_quiet  # noqa: E402  (bench/ is on sys.path when run as a script)


class Timer:
    """Wall time of a block, and CPU seconds used meanwhile by other processes."""

    def __enter__(self):
        wait_quiet()
        self.b0, self.s0 = cpu_snapshot() if Path("/proc/stat").exists() else (0.0, 0.0)
        self.t0 = time.perf_counter()
        return self

    def __exit__(self, *exc):
        self.seconds = time.perf_counter() - self.t0
        b1, s1 = cpu_snapshot() if Path("/proc/stat").exists() else (0.0, 0.0)
        self.other_cpu_s = max(0.0, (b1 - self.b0) - (s1 - self.s0))
        return False


def peak_matmul_flops(dtype: torch.dtype, sizes=(2048, 3072, 4096), repeats: int = 4) -> float:
    """Best FLOP/s of square matmuls in `dtype` with torch's current thread count."""
    best = 0.0
    for n in sizes:
        a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
        a @ b  # warm-up
        reps = max(2, int(3e10 / (2 * n**3)))
        for _ in range(repeats):
            with Timer() as t:
                for _ in range(reps):
                    a @ b
            best = max(best, 2 * n**3 * reps / t.seconds)
    return best


# --- the methods -----------------------------------------------------------------


def real_tokens(tokenizer, texts: list[str]) -> int:
    ids, _ = extract.tokenize(tokenizer, texts, MAX_LENGTH)
    return int(sum(len(x) for x in ids))


@contextlib.contextmanager
def timed_attention():
    """Within the block, every torch scaled_dot_product_attention call is timed: yields [seconds, calls].

    transformers looks the function up on torch.nn.functional at each call, so patching it sees the model's
    attention; the added cost is two clock reads per call."""
    import torch.nn.functional as F

    original, spent = F.scaled_dot_product_attention, [0.0, 0]

    def timed(*args, **kwargs):
        t0 = time.perf_counter()
        out = original(*args, **kwargs)
        spent[0] += time.perf_counter() - t0
        spent[1] += 1
        return out

    F.scaled_dot_product_attention = timed
    try:
        yield spent
    finally:
        F.scaled_dot_product_attention = original


def run_engine(loaded, texts: list[str], workdir: Path) -> dict:
    extract.extract(loaded, texts[:16], workdir / "warm.npy", pooling="mean", max_length=MAX_LENGTH)  # warm-up
    with timed_attention() as attention, Timer() as t:
        stats = extract.extract(loaded, texts, workdir / "engine.npy", pooling="mean", max_length=MAX_LENGTH)
    return {
        "tokens": stats.n_tokens,
        "seconds": t.seconds,
        "other_cpu_s": t.other_cpu_s,
        "attention_seconds": attention[0],
        "attention_calls": attention[1],
    }


def run_naive(folder: Path, tokenizer, texts: list[str]) -> dict:
    """The original study's way: a feature-extraction pipeline, one letter per call, fp32, last token."""
    from transformers import pipeline

    pipe = pipeline("feature-extraction", model=str(folder), tokenizer=str(folder), dtype=torch.float32, device="cpu")
    kwargs = {"tokenize_kwargs": {"truncation": True, "max_length": MAX_LENGTH}}
    for text in texts[:2]:  # warm-up
        pipe(text, **kwargs)
    vectors = []
    with Timer() as t:
        for text in texts:
            vectors.append(np.asarray(pipe(text, **kwargs)[0][-1], dtype=np.float32))
    return {"tokens": real_tokens(tokenizer, texts), "seconds": t.seconds, "other_cpu_s": t.other_cpu_s}


def run_st(folder: Path, tokenizer, texts: list[str]) -> dict:
    """sentence-transformers' encode in bf16, reading the same 512 tokens per letter as the engine."""
    from sentence_transformers import SentenceTransformer

    st = SentenceTransformer(str(folder), device="cpu", model_kwargs={"dtype": torch.bfloat16})
    st.max_seq_length = MAX_LENGTH
    st.encode(texts[:32])  # warm-up
    with Timer() as t:
        st.encode(texts)
    return {
        "tokens": real_tokens(tokenizer, texts),
        "seconds": t.seconds,
        "other_cpu_s": t.other_cpu_s,
        "dtype": str(next(st.parameters()).dtype).replace("torch.", ""),
    }


def flops_per_token(model, seq_len: float) -> tuple[float, int]:
    """2 x non-embedding parameters + 4 x layers x hidden x sequence length; and that parameter count."""
    embedding = sum(p.numel() for m in model.modules() if isinstance(m, torch.nn.Embedding) for p in m.parameters(recurse=False))
    non_embedding = sum(p.numel() for p in model.parameters()) - embedding
    cfg = model.config
    return 2 * non_embedding + 4 * cfg.num_hidden_layers * cfg.hidden_size * seq_len, non_embedding


# --- the benchmark ------------------------------------------------------------------


def datasets(args) -> list[tuple[str, list[str], int]]:
    """(name, letters measured, letters for the naive way)."""
    out = []
    default = list(dataset.default_dataset().texts)
    n = args.letters or (96 if args.quick else len(default))
    out.append(("default", default[:n], min(n, args.naive_letters or (24 if args.quick else 120))))
    path = Path(args.mtsamples)
    if path.exists():
        import pandas as pd

        col = pd.read_csv(path, usecols=["transcription"])["transcription"]
        texts = [t for t in col.dropna().astype(str) if t.strip()]
        n = args.letters or (96 if args.quick else args.mts_letters or len(texts))
        out.append(
            (
                f"mtsamples ({path.name}, {len(texts)} non-empty transcriptions)",
                texts[:n],
                min(n, args.naive_letters or (24 if args.quick else 120)),
            )
        )
    return out


def measure_model(name: str, sets, peak: float, workdir: Path) -> dict:
    placement = choose()
    loaded = catalog.load(name, placement)
    folder = catalog.locate(catalog.resolve(name))[0]
    results = {}
    for ds_name, texts, n_naive in sets:
        print(f"  {name} on {ds_name}: {len(texts)} letters ...", flush=True)
        eng = run_engine(loaded, texts, workdir)
        seq = eng["tokens"] / len(texts)
        fpt, non_emb = flops_per_token(loaded.model, seq)
        row = {
            "model": name,
            "kind": loaded.kind,
            "dataset": ds_name,
            "letters": len(texts),
            "naive_letters": n_naive,
            "mean_tokens_per_letter": round(seq, 1),
            "dtype": placement.dtype,
            "threads": torch.get_num_threads(),
            "non_embedding_params": non_emb,
            "flops_per_token": fpt,
            "peak_flops": peak,
            "tokens": eng["tokens"],
            "tokens_per_s": eng["tokens"] / eng["seconds"],
            "engine_seconds": eng["seconds"],
            "limit_tokens_per_s": peak / fpt,
            "other_cpu_s": {"engine": round(eng["other_cpu_s"], 2)},
        }
        row["attention_seconds"] = eng["attention_seconds"]
        row["attention_calls"] = eng["attention_calls"]
        row["attention_share"] = eng["attention_seconds"] / eng["seconds"]
        naive = run_naive(folder, loaded.tokenizer, texts[:n_naive])
        row["naive_tokens_per_s"] = naive["tokens"] / naive["seconds"]
        row["other_cpu_s"]["naive"] = round(naive["other_cpu_s"], 2)
        if loaded.kind == "encoder" and name == "minilm":
            st = run_st(folder, loaded.tokenizer, texts)
            row["st_tokens_per_s"] = st["tokens"] / st["seconds"]
            row["st_dtype"] = st["dtype"]
            row["other_cpu_s"]["st"] = round(st["other_cpu_s"], 2)
            row["speedup_vs_st"] = row["tokens_per_s"] / row["st_tokens_per_s"]
        row["fraction_of_limit"] = row["tokens_per_s"] / row["limit_tokens_per_s"]
        row["speedup_vs_naive"] = row["tokens_per_s"] / row["naive_tokens_per_s"]
        results[ds_name] = row
    del loaded
    return results


SCALE_RSS_TARGET_GB = 3.0


def rss_bytes() -> int:
    """This process's resident set size now."""
    try:
        import psutil

        return psutil.Process().memory_info().rss
    except ImportError:
        with open("/proc/self/status") as fh:
            return next(int(line.split()[1]) * 1024 for line in fh if line.startswith("VmRSS:"))


class RssSampler:
    """Samples rss_bytes() every `every` seconds in a thread: (seconds since start, bytes) pairs and the peak."""

    def __init__(self, every: float = 0.5):
        import threading

        self.every, self.samples, self.t0 = every, [], time.perf_counter()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        while not self._stop.is_set():
            self.samples.append((time.perf_counter() - self.t0, rss_bytes()))
            self._stop.wait(self.every)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.samples.append((time.perf_counter() - self.t0, rss_bytes()))
        return False

    @property
    def peak(self) -> int:
        return max(b for _, b in self.samples)


def scale_letters(path: Path, n: int) -> list[str]:
    """n letters: the non-empty MTSamples transcriptions (the bundled default letters when that file is absent) repeated,
    each with its number appended (so every text differs)."""
    import pandas as pd

    if Path(path).exists():
        col = pd.read_csv(path, usecols=["transcription"])["transcription"]
        base = [t for t in col.dropna().astype(str) if t.strip()]
    else:
        base = [t for t in dataset.default_dataset().texts if t.strip()]
    return [f"{base[i % len(base)]} [{i}]" for i in range(n)]


def run_scale(args) -> int:
    """--scale N: extract N letters into a memory-mapped .npy in a fresh cache; RSS over time and the rate per tenth."""
    import resource

    from _machine import fresh_cache

    gb = 2**30
    placement = choose()
    rss_start = rss_bytes()
    texts = scale_letters(Path(args.mtsamples), args.scale)
    rss_texts = rss_bytes()
    loaded = catalog.load("minilm", placement)
    extract.extract(loaded, texts[:16], Path(tempfile.mkdtemp()) / "warm.npy", max_length=MAX_LENGTH)  # warm-up
    rss_model = rss_bytes()
    print(f"scale: {len(texts):,} letters on {placement.describe()}, {torch.get_num_threads()} threads; RSS at start "
          f"{rss_start / gb:.2f} GB, with the letters {rss_texts / gb:.2f} GB, with the model {rss_model / gb:.2f} GB", flush=True)  # fmt: skip
    marks: list[tuple[float, int, str]] = []  # (seconds, rows done, stage)
    tenth = max(1, args.scale // 10)

    last_done = [0]  # the last progress report's count (a stop comes between marks)

    def progress(done, total, stage):
        now = time.perf_counter() - t0
        if stage != "embedding":
            return
        last_done[0] = done
        if not marks or done // tenth > marks[-1][1] // tenth or now - marks[-1][0] >= 60 or done == total:
            marks.append((now, done, stage))
            rss_now = sampler.samples[-1][1] if sampler.samples else 0
            print(f"  [{now:7.1f} s] {done:>7,}/{total:,} letters, RSS {rss_now / gb:.2f} GB", flush=True)

    from engine.cache.context import StepContext
    from engine.errors import Cancelled

    def should_stop() -> bool:
        return args.seconds is not None and time.perf_counter() - t0 > args.seconds

    stats = None
    with fresh_cache("scale") as cache, RssSampler() as sampler:
        t0 = time.perf_counter()
        try:
            ctx = StepContext(progress=progress, should_stop=should_stop)
            stats = extract.extract(loaded, texts, Path(cache) / "scale.npy", max_length=MAX_LENGTH, ctx=ctx)
            vectors = np.load(Path(cache) / "scale.npy", mmap_mode="r")
            assert vectors.shape == (len(texts), stats.dim) and np.isfinite(vectors[-1]).all()
        except Cancelled:
            print(f"  stopped after {args.seconds} s (--seconds)", flush=True)
        seconds = time.perf_counter() - t0
    done = len(texts) if stats else last_done[0]
    maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # (Linux: KB)
    # Letters are embedded longest first, so letters/s rises over a run by itself; tokens/s is the rate to compare. The
    # tokens of the first k letters embedded: the k longest (ties are equally long), counted after the memory was measured.
    lengths = []
    for start in range(0, len(texts), 2048):
        lengths.extend(len(x) for x in extract.tokenize(loaded.tokenizer, texts[start : start + 2048], MAX_LENGTH)[0])
    before = np.concatenate([[0], np.cumsum(sorted(lengths, reverse=True))])
    windows = []
    for (t_a, d_a, _), (t_b, d_b, _) in itertools.pairwise(marks):
        tokens = int(before[d_b] - before[d_a])
        windows.append({"from_letter": d_a, "to_letter": d_b, "seconds": t_b - t_a, "letters_per_s": (d_b - d_a) / (t_b - t_a),
                        "tokens_per_s": tokens / (t_b - t_a)})  # fmt: skip
    tokenise_s = marks[0][0] if marks else float("nan")  # until the first batch was embedded
    print(f"\n{'letters':>17} {'seconds':>8} {'letters/s':>10} {'tokens/s':>9}")
    for w in windows:
        print(f"{w['from_letter']:>8,}-{w['to_letter']:<8,} {w['seconds']:8.1f} {w['letters_per_s']:10.1f} {w['tokens_per_s']:9,.0f}")
    rates = [w["tokens_per_s"] for w in windows]
    peak = sampler.peak
    whole = f"{stats.n_tokens / seconds:,.0f} tokens/s; {stats.n_truncated:,} cut to {MAX_LENGTH} tokens" if stats else "stopped"
    print(f"\n{done:,} of {len(texts):,} letters in {seconds:.0f} s ({done / seconds:.1f} letters/s; tokenising, planning and "
          f"the first batch {tokenise_s:.1f} s; {whole})")  # fmt: skip
    if rates:
        print(f"tokens/s over time: min {min(rates):,.0f}, max {max(rates):,.0f}, last/first {rates[-1] / rates[0]:.2f}")
    print(f"peak RSS {peak / gb:.2f} GB (sampled every 0.5 s; getrusage maxrss {maxrss / gb:.2f} GB); above the model "
          f"and letters: {(peak - rss_model) / gb:.2f} GB; target < {SCALE_RSS_TARGET_GB} GB: "
          f"{'met' if max(peak, maxrss) < SCALE_RSS_TARGET_GB * gb else 'MISSED'}")  # fmt: skip
    out = {
        "mode": "scale",
        "letters": len(texts),
        "letters_done": done,
        "complete": stats is not None,
        "model": "minilm",
        "max_length": MAX_LENGTH,
        "device": placement.device,
        "dtype": placement.dtype,
        "threads": torch.get_num_threads(),
        "seconds": seconds,
        "tokenise_s": tokenise_s,
        "letters_per_s": done / seconds,
        "tokens": stats.n_tokens if stats else None,
        "tokens_per_s": stats.n_tokens / seconds if stats else None,
        "n_truncated": stats.n_truncated if stats else None,
        "rss_start_bytes": rss_start,
        "rss_with_letters_bytes": rss_texts,
        "rss_with_model_bytes": rss_model,
        "peak_rss_bytes": peak,
        "maxrss_bytes": maxrss,
        "peak_above_model_bytes": peak - rss_model,
        "target_gb": SCALE_RSS_TARGET_GB,
        "met": max(peak, maxrss) < SCALE_RSS_TARGET_GB * gb,
        "rate_over_time": windows,  # per tenth of the letters, or per minute when a tenth takes longer
        "rss_samples": sampler.samples[:: max(1, len(sampler.samples) // 400)],  # (seconds, bytes), at most ~400
        "load_average": os.getloadavg()[0],
        "versions": {"python": platform.python_version(), "torch": torch.__version__},
    }
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(out, indent=2))
        print(f"wrote {args.json}")
    return 0


def _ray_step(texts: list[str], placement, shards: int, chunk_rows: int) -> dict:
    """A Ray task: one extraction as a Ray step with one CPU runs it, its chunks split into `shards` (engine.runs.ray_shards)."""
    import hashlib

    from engine.cache.context import StepContext
    from engine.runs import ray_shards

    torch.set_num_threads(1)
    extract.CHUNK_ROWS = chunk_rows
    t0 = time.perf_counter()
    ctx = StepContext()
    ctx.shards = lambda model, where: ray_shards.spreader(model, where, shards, 1, 0, 1)
    vectors, stats = extract.embed("minilm", texts, max_length=MAX_LENGTH, placement=placement, ctx=ctx)
    return {
        "seconds": time.perf_counter() - t0,
        "tokens": stats.n_tokens,
        "sha256": hashlib.sha256(np.asarray(vectors).tobytes()).hexdigest(),
    }


def run_scale_ray(args) -> int:
    """--scale N --executor ray: one extraction sharded over 1, 2, ... local Ray workers, against this process alone."""
    import hashlib

    from _machine import fresh_cache

    from engine.runs import ray_driver

    placement = choose()
    extract.CHUNK_ROWS = args.chunk_rows
    texts = scale_letters(Path(args.mtsamples), args.scale)
    workers = [int(w) for w in args.ray_workers.split(",")]
    print(f"ray scale: {len(texts):,} letters on {placement.describe()}, chunks of {extract.CHUNK_ROWS} letters, 1 thread per "
          f"worker; workers {workers}; {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}", flush=True)  # fmt: skip
    rows = []
    with fresh_cache("ray-scale-local"):  # the reference: this process, one thread, no Ray
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        load0, t0 = os.getloadavg()[0], time.perf_counter()
        vectors, stats = extract.embed("minilm", texts, max_length=MAX_LENGTH, placement=placement)
        seconds = time.perf_counter() - t0
        reference = hashlib.sha256(np.asarray(vectors).tobytes()).hexdigest()
        torch.set_num_threads(threads)
        rows.append({"executor": "local", "workers": 1, "seconds": seconds, "tokens": stats.n_tokens, "sha256": reference,
                     "load_before": load0, "load_after": os.getloadavg()[0]})  # fmt: skip
        print(f"  local, 1 thread: {seconds:.1f} s", flush=True)
    for n in workers:
        with fresh_cache(f"ray-scale-{n}"):
            ray_driver.connect_cluster(None, num_cpus=n)  # (imports ray once it is kept on loopback)
            ray = sys.modules["ray"]
            try:
                step = ray.remote(num_cpus=1, max_calls=1)(_ray_step)
                load0 = os.getloadavg()[0]
                got = ray.get(step.remote(texts, placement, n, args.chunk_rows))
            finally:
                ray.shutdown()
        rows.append({"executor": "ray", "workers": n, **got, "load_before": load0, "load_after": os.getloadavg()[0]})
        print(f"  ray, {n} worker(s): {got['seconds']:.1f} s", flush=True)
    one = next((r["seconds"] for r in rows if r["executor"] == "ray" and r["workers"] == 1), None)
    print(f"\n{'executor':8} {'workers':>7} {'seconds':>8} {'letters/s':>10} {'tokens/s':>9} {'x ray 1':>8} {'load':>9}  same vectors")
    for r in rows:
        r.update(letters_per_s=len(texts) / r["seconds"], tokens_per_s=r["tokens"] / r["seconds"], same_as_local=r["sha256"] == reference)
        r["speedup_vs_ray_1"] = one / r["seconds"] if one else None
        x = f"{r['speedup_vs_ray_1']:8.2f}" if one else f"{'-':>8}"
        print(f"{r['executor']:8} {r['workers']:7d} {r['seconds']:8.1f} {r['letters_per_s']:10.1f} {r['tokens_per_s']:9,.0f} {x} "
              f"{r['load_before']:4.1f}-{r['load_after']:<4.1f}  {'yes' if r['same_as_local'] else 'NO'}")  # fmt: skip
    print("(load: the 1-minute load average before-after each row; the machine may be shared)")
    out = {
        "mode": "scale-ray",
        "letters": len(texts),
        "model": "minilm",
        "max_length": MAX_LENGTH,
        "device": placement.device,
        "dtype": placement.dtype,
        "chunk_rows": extract.CHUNK_ROWS,
        "threads_per_worker": 1,
        "cpus": os.cpu_count(),
        "rows": rows,
        "versions": {"python": platform.python_version(), "torch": torch.__version__, "ray": ray.__version__},
    }
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(out, indent=2))
        print(f"wrote {args.json}")
    return 0 if all(r["same_as_local"] for r in rows) else 1


# --- ONNX Runtime (--runtime onnx) ------------------------------------------------------------------------------------


def _onnx_export(loaded, path: Path) -> list[str]:
    """The loaded model's last hidden state in ONNX (torch.onnx's dynamo exporter; batch and length dynamic); its inputs.
    A decoder takes the token ids alone, as the engine runs it (no attention mask: right padding, causal attention)."""

    class Encoder(torch.nn.Module):
        def __init__(self, model):
            super().__init__()
            self.model = model

        def forward(self, input_ids, attention_mask):
            return self.model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state

    class Decoder(Encoder):
        def forward(self, input_ids):
            return self.model(input_ids=input_ids).last_hidden_state

    ids = torch.randint(5, 1000, (2, 33))
    mask = torch.ones_like(ids)
    mask[1, 20:] = 0
    names = ["input_ids"] if loaded.kind == "decoder" else ["input_ids", "attention_mask"]
    module = (Decoder if loaded.kind == "decoder" else Encoder)(loaded.model).eval()
    dims = {0: torch.export.Dim("batch"), 1: torch.export.Dim("tokens")}
    torch.onnx.export(module, (ids, mask)[: len(names)], str(path), dynamo=True, input_names=names, output_names=["hidden"],
                      dynamic_shapes=dict.fromkeys(names, dims), external_data=False)  # fmt: skip
    return names


def _ort_bf16_matmul() -> str | None:
    """None when ONNX Runtime's CPU provider runs a bf16 MatMul; else why not (its error, one line)."""
    import onnxruntime as ort
    from onnx import TensorProto, helper

    bf16 = TensorProto.BFLOAT16
    graph = helper.make_graph([helper.make_node("MatMul", ["a", "b"], ["c"])], "g",
                              [helper.make_tensor_value_info(n, bf16, [4, 4]) for n in "ab"],
                              [helper.make_tensor_value_info("c", bf16, [4, 4])])  # fmt: skip
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8  # (onnx writes a newer IR version than onnxruntime 1.30 reads)
    try:
        ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
        return None
    except Exception as exc:  # (onnxruntime raises its own exception types)
        return " ".join(str(exc).split())[:200]


def _ort_vectors(session, names: list[str], tokenizer, texts: list[str]) -> tuple[np.ndarray, int]:
    """Mean-pooled vectors of `texts` through an ONNX Runtime session, batched and padded exactly as the engine's extractor
    (extract.tokenize, plan_batches, right padding, extract.pool); and the real tokens read."""
    ids, _ = extract.tokenize(tokenizer, texts, MAX_LENGTH)
    lengths = [len(x) for x in ids]
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    rows = {}
    for batch in extract.plan_batches(lengths, extract.default_batch_tokens("cpu"), tiebreak=[x.tobytes() for x in ids]):
        longest = lengths[batch[0]]
        input_ids = np.full((len(batch), longest), pad_id, dtype=np.int64)
        mask = np.zeros((len(batch), longest), dtype=np.int64)
        for row, i in enumerate(batch):
            input_ids[row, : lengths[i]] = ids[i]
            mask[row, : lengths[i]] = 1
        feed = {"input_ids": input_ids, "attention_mask": mask}
        hidden = session.run(None, {n: feed[n] for n in names})[0]
        pooled = extract.pool(torch.from_numpy(hidden), torch.from_numpy(mask), "mean").numpy()
        rows.update(zip(batch, pooled))
    return np.stack([rows[i] for i in range(len(texts))]), int(sum(lengths))


def _min_cosine(a: np.ndarray, b: np.ndarray) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(((a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))).min())


ONNX_ADOPT_SPEEDUP, ONNX_ADOPT_COSINE = 1.3, 0.999  # adopt ONNX Runtime only if this much faster than the engine, this close


def run_onnx(args) -> int:
    """--runtime onnx: each model's engine extraction in PyTorch (fp32, and the default placement) against ONNX Runtime
    (fp32, dynamic int8; bf16 where its CPU provider has the kernels) on the same letters, batches and pooling: tokens/s
    and the minimum cosine of the pooled vectors to PyTorch fp32."""
    try:
        import onnxruntime as ort
        from onnxruntime.quantization import QuantType, quantize_dynamic
    except ImportError as exc:
        print(f"--runtime onnx: skipped, onnxruntime is not importable ({exc}); install onnxruntime and onnx (e.g. into a "
              "folder of their own on PYTHONPATH) to measure it.")  # fmt: skip
        return 0
    threads = torch.get_num_threads()
    default = choose()
    texts = list(dataset.default_dataset().texts)[: args.letters or (32 if args.quick else 96)]
    bf16_problem = _ort_bf16_matmul()
    print(f"ONNX Runtime {ort.__version__} against PyTorch {torch.__version__} ({default.describe()} by default), {threads} "
          f"threads, {len(texts)} default letters, max_length {MAX_LENGTH}, mean pooling", flush=True)  # fmt: skip
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models.split(","):
            fp32 = catalog.load(name, choose(dtype="float32"))
            measured = {}  # (runtime, precision) -> (vectors, tokens, seconds, other CPU s)
            for label, loaded in (("float32", fp32), (default.dtype, catalog.load(name, default) if default.dtype != "float32" else None)):
                if loaded is None or ("pytorch", label) in measured:
                    continue
                extract.extract(loaded, texts[:4], Path(tmp) / "warm.npy", max_length=MAX_LENGTH)
                with Timer() as t:
                    stats = extract.extract(loaded, texts, Path(tmp) / "v.npy", max_length=MAX_LENGTH)
                measured[("pytorch", label)] = (np.load(Path(tmp) / "v.npy"), stats.n_tokens, t.seconds, t.other_cpu_s)
            t0 = time.perf_counter()
            path = Path(tmp) / f"{name}.onnx"
            names = _onnx_export(fp32, path)
            export_s = time.perf_counter() - t0
            quantize_dynamic(str(path), str(Path(tmp) / f"{name}-int8.onnx"), weight_type=QuantType.QInt8)
            for label, file in (("float32", path), ("int8 (dynamic)", Path(tmp) / f"{name}-int8.onnx")):
                so = ort.SessionOptions()
                so.intra_op_num_threads, so.inter_op_num_threads = threads, 1
                session = ort.InferenceSession(str(file), so, providers=["CPUExecutionProvider"])
                _ort_vectors(session, names, fp32.tokenizer, texts[:4])  # warm-up
                with Timer() as t:
                    vecs, tokens = _ort_vectors(session, names, fp32.tokenizer, texts)
                measured[("onnxruntime", label)] = (vecs, tokens, t.seconds, t.other_cpu_s)
            reference = measured[("pytorch", "float32")][0]
            engine_rate = measured[("pytorch", default.dtype)][1] / measured[("pytorch", default.dtype)][2]
            for (runtime, label), (vecs, tokens, seconds, other) in measured.items():
                rows.append({"model": name, "runtime": runtime, "precision": label, "tokens": tokens, "seconds": seconds,
                             "tokens_per_s": tokens / seconds, "x_engine_default": tokens / seconds / engine_rate,
                             "min_cosine_to_pytorch_fp32": _min_cosine(vecs, reference), "other_cpu_s": round(other, 2),
                             "export_s": export_s if runtime == "onnxruntime" else None})  # fmt: skip
            rows.append({"model": name, "runtime": "onnxruntime", "precision": "bfloat16", "tokens_per_s": None,
                         "not_measured": bf16_problem or "the CPU provider has bf16 MatMul, but no converter to bf16 was run"})  # fmt: skip
            del fp32
    print(f"\n{'model':8} {'runtime':12} {'precision':15} {'tokens/s':>9} {'x engine':>8} {'min cos':>8} {'other CPU s':>11}")
    for r in rows:
        if r["tokens_per_s"] is None:
            print(f"{r['model']:8} {r['runtime']:12} {r['precision']:15} {'-':>9}  not measured: {r['not_measured']}")
            continue
        print(f"{r['model']:8} {r['runtime']:12} {r['precision']:15} {r['tokens_per_s']:9.0f} {r['x_engine_default']:8.2f} "
              f"{r['min_cosine_to_pytorch_fp32']:8.5f} {r['other_cpu_s']:11.1f}")  # fmt: skip
    best = [r for r in rows if r["runtime"] == "onnxruntime" and r["tokens_per_s"] is not None]
    adopt = [r for r in best if r["x_engine_default"] >= ONNX_ADOPT_SPEEDUP and r["min_cosine_to_pytorch_fp32"] >= ONNX_ADOPT_COSINE]
    print(f"\nadopt ONNX Runtime (>= {ONNX_ADOPT_SPEEDUP}x the engine's default at min cosine >= {ONNX_ADOPT_COSINE}): "
          + (", ".join(f"{r['model']} {r['precision']}" for r in adopt) or "no"))  # fmt: skip
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"mode": "onnx", "letters": len(texts), "max_length": MAX_LENGTH, "threads": threads,
                                         "engine_default": default.dtype, "cpu": platform.processor() or platform.machine(),
                                         "load_average": os.getloadavg()[0], "onnxruntime": ort.__version__,
                                         "torch": torch.__version__, "rows": rows, "adopt": [f"{r['model']} {r['precision']}" for r in adopt]},
                                        indent=2))  # fmt: skip
        print(f"wrote {args.json}")
    return 0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="96 letters per dataset, 24 for the naive way (~1-2 min)")
    ap.add_argument("--json", type=Path, help="write the results here")
    ap.add_argument("--models", default="minilm,smollm2")
    ap.add_argument("--letters", type=int, default=0, help="letters per dataset (default: quick 96, full all)")
    ap.add_argument("--mts-letters", type=int, default=2000, help="full mode: letters of mtsamples measured (0 = all)")
    ap.add_argument("--naive-letters", type=int, default=0, help="letters for the naive way (default: quick 24, full 120)")
    ap.add_argument("--mtsamples", default=str(MTSAMPLES))
    ap.add_argument("--scale", type=int, nargs="?", const=50_000, default=None, metavar="N",
                    help="scale mode: N letters (default 50,000) of MTSamples repeated, peak RSS and rate over time")  # fmt: skip
    ap.add_argument("--seconds", type=float, default=None, help="scale mode: stop the extraction after this many seconds")
    ap.add_argument("--executor", choices=("local", "ray"), default="local", help="scale mode: ray shards one extraction over Ray workers")
    ap.add_argument("--ray-workers", default="1,2", help="scale mode with --executor ray: the worker counts measured")
    ap.add_argument("--chunk-rows", type=int, default=extract.CHUNK_ROWS, help="scale mode with --executor ray: letters per chunk")
    ap.add_argument("--runtime", choices=("torch", "onnx"), default="torch",
                    help="onnx: the engine (PyTorch fp32 and default) against ONNX Runtime fp32 / int8 on the default letters "
                    "(--letters, default 96; quick 32): tokens/s and min cosine to PyTorch fp32; skipped without onnxruntime")  # fmt: skip
    args = ap.parse_args(argv)
    if args.executor == "ray" and not args.scale:
        ap.error("--executor ray measures the scale mode: give --scale N")
    if args.scale:
        return run_scale_ray(args) if args.executor == "ray" else run_scale(args)
    if args.runtime == "onnx":
        return run_onnx(args)

    t_start = time.perf_counter()
    placement = choose()
    dtype = placement.torch_dtype
    threads = torch.get_num_threads()
    print(f"ClinBench extraction benchmark ({'quick' if args.quick else 'full'}): {placement.describe()}, {threads} torch threads")
    sets = datasets(args)
    peak_before = peak_matmul_flops(dtype)
    print(f"peak {placement.dtype} matmul: {peak_before / 1e12:.2f} TFLOP/s", flush=True)
    rows: dict[str, dict] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models.split(","):
            rows[name] = measure_model(name, sets, peak_before, Path(tmp))
    peak_after = peak_matmul_flops(dtype)
    peak = max(peak_before, peak_after)  # the higher peak makes the limit stricter
    for by_ds in rows.values():
        for row in by_ds.values():
            row["peak_flops"] = peak
            row["limit_tokens_per_s"] = peak / row["flops_per_token"]
            row["fraction_of_limit"] = row["tokens_per_s"] / row["limit_tokens_per_s"]
            if row["attention_calls"]:  # else the model did not run torch's SDPA and there is no bound to state
                row["bound_tokens_per_s"] = row["tokens"] / (
                    row["attention_seconds"] + 2 * row["non_embedding_params"] * row["tokens"] / peak
                )
                row["bound_fraction_of_limit"] = row["bound_tokens_per_s"] / row["limit_tokens_per_s"]
                row["fraction_of_bound"] = row["tokens_per_s"] / row["bound_tokens_per_s"]

    print(
        f"\npeak {placement.dtype} matmul FLOP/s: {peak / 1e12:.2f} T (before {peak_before / 1e12:.2f}, after {peak_after / 1e12:.2f}); "
        f"{threads} threads"
    )
    head = (
        f"{'model':8} {'dataset':10} {'letters':>7} {'tok/letter':>10} {'engine':>9} {'naive':>9} {'st':>9} {'limit':>9} "
        f"{'bound':>9} {'x naive':>8} {'x st':>6} {'of limit':>8} {'bound/limit':>11} {'attn':>5}"
    )
    print(head + "\n" + "-" * len(head))
    for name, by_ds in rows.items():
        for ds_name, r in by_ds.items():
            st = f"{r['st_tokens_per_s']:9.0f}" if "st_tokens_per_s" in r else f"{'-':>9}"
            xst = f"{r['speedup_vs_st']:6.2f}" if "speedup_vs_st" in r else f"{'-':>6}"
            print(
                f"{name:8} {ds_name.split(' ')[0]:10} {r['letters']:7d} {r['mean_tokens_per_letter']:10.0f} {r['tokens_per_s']:9.0f} "
                f"{r['naive_tokens_per_s']:9.0f} {st} {r['limit_tokens_per_s']:9.0f} {r.get('bound_tokens_per_s', float('nan')):9.0f} "
                f"{r['speedup_vs_naive']:8.1f} {xst} {r['fraction_of_limit']:8.2f} {r.get('bound_fraction_of_limit', float('nan')):11.2f} "
                f"{r['attention_share']:5.0%}"
            )
    print(
        "(tokens/s of real tokens; bound: torch's attention kernel as measured + linear layers at peak, nothing else;"
        " attn: that kernel's share of an engine pass;\n naive measured on the first "
        + ", ".join(f"{n_naive} letters of {ds.split(' ')[0]}" for ds, _t, n_naive in sets)
        + ")"
    )
    busy = [
        (n, d, k, v)
        for n, by in rows.items()
        for d, r in by.items()
        for k, v in r["other_cpu_s"].items()
        if v > 0.1 * threads * max(1e-9, r["engine_seconds"] if k == "engine" else 1e9)
    ]
    if busy:
        print(
            "warning: other processes used the CPUs during "
            + ", ".join(f"{n}/{d.split(' ')[0]}/{k} ({v:.1f} CPU s)" for n, d, k, v in busy)
        )

    targets = []
    print("\ntargets (on every dataset measured):")
    for (model, metric), minimum in TARGETS.items():
        for ds_name, r in rows.get(model, {}).items():
            if metric in r:
                met = r[metric] >= minimum
                targets.append({"model": model, "dataset": ds_name, "metric": metric, "minimum": minimum, "value": r[metric], "met": met})
                print(
                    f"  {model:8} {ds_name.split(' ')[0]:10} {metric:18} >= {minimum:<4} : {r[metric]:6.2f}  {'met' if met else 'MISSED'}"
                )

    out = {
        "mode": "quick" if args.quick else "full",
        "device": placement.device,
        "dtype": placement.dtype,
        "threads": threads,
        "peak_flops": peak,
        "peak_flops_before": peak_before,
        "peak_flops_after": peak_after,
        "max_length": MAX_LENGTH,
        "pooling_engine": "mean",
        "naive": "transformers pipeline('feature-extraction'), one letter per call, fp32, last token, truncation at 512",
        "st": "SentenceTransformer(minilm folder, dtype bf16).encode, max_seq_length 512, default batch size",
        "datasets": [{"name": ds, "letters": len(t), "naive_letters": nn} for ds, t, nn in sets],
        "models": {name: by_ds[sets[0][0]] for name, by_ds in rows.items()},  # the default dataset
        "by_dataset": {ds: {name: by_ds[ds] for name, by_ds in rows.items()} for ds, _t, _n in sets},
        "targets": targets,
        "versions": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "transformers": __import__("transformers").__version__,
            "sentence_transformers": __import__("sentence_transformers").__version__,
        },
        "cpu": platform.processor() or platform.machine(),
        "seconds_total": time.perf_counter() - t_start,
    }
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(out, indent=2))
        print(f"\nwrote {args.json}")
    print(f"total {out['seconds_total']:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
