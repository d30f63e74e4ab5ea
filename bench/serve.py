"""Latency and throughput of `python -m engine serve` over loopback.

    python bench/serve.py [--requests 30] [--clients 4] [--concurrent-requests 40] [--cache DIR] --json PATH

In a temporary cache (or --cache DIR), it first stores three classifiers of the bundled default letters with
`python -m engine evaluate --max-length 256 --protocol holdout`: MiniLM -> logreg, MiniLM -> SVC, SmolLM2 -> logreg.
Then it starts the real server (`python -m engine serve`, a free loopback port) and, per classifier:

* latency    - one client, `--requests` POST /classify of real default-dataset letters one after another
               (after two warm-up requests, which load the model): p50/p95 of the time the client waits, and of
               the server's own `latency_ms` (predict_proba alone);
* throughput - `--clients` concurrent clients sending `--concurrent-requests` letters in all: letters per second.

Any non-200 answer is an error and fails the benchmark (exit 1). The machine may be shared: each timing waits
(a while) for the CPUs to be quiet and reports the CPU seconds other processes used meanwhile.
Targets (one client, p50 of the client's wait): MiniLM < 60 ms, SmolLM2 < 250 ms.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench._machine import cpu_snapshot, wait_quiet  # noqa: E402

CLASSIFIERS = (("minilm", "logreg"), ("minilm", "svc"), ("smollm2", "logreg"))
TARGET_P50_MS = {"minilm": 60.0, "smollm2": 250.0}


def engine(env: dict, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "engine", *args], cwd=ROOT, env=env, capture_output=True, text=True)


def store_classifiers(env: dict, workdir: Path) -> dict[tuple[str, str], str]:
    keys = {}
    for model, method in CLASSIFIERS:
        out = workdir / f"{model}-{method}.json"
        t0 = time.perf_counter()
        flags = f"evaluate --data default --model {model} --method {method} --max-length 256 --protocol holdout"
        r = engine(env, *flags.split(), "--json", str(out))
        if r.returncode != 0:
            sys.exit(f"evaluate {model} {method} failed:\n{r.stderr[-3000:]}")
        keys[(model, method)] = Path(json.loads(out.read_text())["artifact"]).name
        print(f"stored {model} -> {method} ({time.perf_counter() - t0:.0f} s): {keys[(model, method)]}", file=sys.stderr)
    return keys


def post(base: str, path: str, body: dict, timeout: float = 120) -> tuple[int, dict, float]:
    req = urllib.request.Request(base + path, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
    t0 = time.perf_counter()
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            status, answer = r.status, json.load(r)
    except urllib.error.HTTPError as exc:
        status, answer = exc.code, {"detail": exc.read().decode(errors="replace")[:300]}
    return status, answer, (time.perf_counter() - t0) * 1e3


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def measure(base: str, cid: str, letters: list[str], n: int, clients: int, n_concurrent: int) -> dict:
    errors = []
    for text in letters[:2]:  # warm-up: loads the classifier and its model
        status, answer, _ = post(base, "/classify", {"text": text, "classifier": cid})
        if status != 200:
            errors.append(f"warm-up: {status} {answer}")
    wait_quiet()
    b0, s0 = cpu_snapshot()
    waits, server = [], []
    for text in letters[2 : 2 + n]:
        status, answer, ms = post(base, "/classify", {"text": text, "classifier": cid})
        if status != 200:
            errors.append(f"{status} {answer}")
            continue
        waits.append(ms)
        server.append(answer["latency_ms"])
    wait_quiet()
    jobs = [letters[i % len(letters)] for i in range(n_concurrent)]
    t0 = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        results = list(pool.map(lambda text: post(base, "/classify", {"text": text, "classifier": cid}), jobs))
    wall = time.perf_counter() - t0
    b1, s1 = cpu_snapshot()
    errors += [f"{status} {answer}" for status, answer, _ in results if status != 200]
    concurrent_ms = [ms for status, _, ms in results if status == 200]
    return {
        "requests": len(waits),
        "p50_ms": statistics.median(waits),
        "p95_ms": pct(waits, 0.95),
        "server_p50_ms": statistics.median(server),
        "server_p95_ms": pct(server, 0.95),
        "clients": clients,
        "concurrent_requests": n_concurrent,
        "throughput_per_s": len(concurrent_ms) / wall,
        "concurrent_p50_ms": statistics.median(concurrent_ms) if concurrent_ms else None,
        "concurrent_p95_ms": pct(concurrent_ms, 0.95) if concurrent_ms else None,
        "other_cpu_s": round(max(0.0, (b1 - b0) - (s1 - s0)), 1),  # includes the server process (a child of this one)
        "errors": errors,
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--requests", type=int, default=30, help="sequential requests per classifier (latency)")
    ap.add_argument("--clients", type=int, default=4, help="concurrent clients (throughput)")
    ap.add_argument("--concurrent-requests", type=int, default=40, help="requests the concurrent clients send in all")
    ap.add_argument("--cache", type=Path, help="cache folder to use (default: a new temporary one)")
    ap.add_argument("--json", type=Path, help="write the results here")
    args = ap.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="clinbench-bench-serve-"))
    env = {**os.environ, "CLINBENCH_CACHE": str(args.cache or workdir / "cache"), "TOKENIZERS_PARALLELISM": "false"}
    keys = store_classifiers(env, workdir)

    from engine.data.dataset import default_dataset

    letters = list(default_dataset().texts)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    log = (workdir / "server.log").open("w")
    server = subprocess.Popen([sys.executable, "-m", "engine", "serve", "--port", str(port)], cwd=ROOT, env=env, stdout=log, stderr=log)
    base = f"http://127.0.0.1:{port}"
    rows = {}
    try:
        for _ in range(600):
            try:
                urllib.request.urlopen(base + "/health", timeout=2).close()
                break
            except OSError:
                if server.poll() is not None:
                    sys.exit(f"the server stopped: {(workdir / 'server.log').read_text()[-2000:]}")
                time.sleep(0.1)
        for (model, method), cid in keys.items():
            rows[f"{model}->{method}"] = {"model": model, "method": method, "classifier": cid}
            rows[f"{model}->{method}"].update(measure(base, cid, letters, args.requests, args.clients, args.concurrent_requests))
    finally:
        server.terminate()
        server.wait(timeout=30)
    print(
        f"\n{'classifier':18s} {'p50 ms':>7s} {'p95 ms':>7s} {'server p50':>10s} {'req/s x' + str(args.clients):>9s} "
        f"{'conc p50':>8s} {'target':>7s} {'other CPU s':>11s} errors"
    )
    failed = False
    for name, r in rows.items():
        target = TARGET_P50_MS[r["model"]]
        r["target_p50_ms"], r["target_met"] = target, r["p50_ms"] < target
        failed |= bool(r["errors"])
        print(
            f"{name:18s} {r['p50_ms']:7.1f} {r['p95_ms']:7.1f} {r['server_p50_ms']:10.1f} {r['throughput_per_s']:9.2f} "
            f"{r['concurrent_p50_ms']:8.1f} {'<' + format(target, 'g'):>7s}{'' if r['target_met'] else '!'} {r['other_cpu_s']:11.1f} "
            f"{len(r['errors'])}"
        )
    result = {
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version()},
        "settings": {
            "requests": args.requests,
            "clients": args.clients,
            "concurrent_requests": args.concurrent_requests,
            "max_length": 256,
            "protocol": "holdout",
        },
        "classifiers": rows,
    }
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    if failed:
        print("errors: " + "; ".join(e for r in rows.values() for e in r["errors"][:3]), file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
