"""Latency and throughput of `python -m engine serve` over loopback.

    python bench/serve.py [--requests 30] [--clients 4] [--concurrent-requests 40] [--batch 32] [--cache DIR]
                          [--classifiers minilm-logreg,...] [--threads default,1] --json PATH

In a temporary cache (or --cache DIR), it first stores three classifiers of the bundled default letters with
`python -m engine evaluate --max-length 256 --protocol holdout`: MiniLM -> logreg, MiniLM -> SVC, SmolLM2 -> logreg.
Then it starts the real server (`python -m engine serve`, a free loopback port) and, per classifier:

* latency    - one client, `--requests` POST /classify of real default-dataset letters one after another
               (after two warm-up requests, which load the model): p50/p95 of the time the client waits, and of
               the server's own `latency_ms` (predict_proba alone);
* throughput - `--clients` concurrent clients sending `--concurrent-requests` letters in all: letters per second.
* under a batch - one client sends `--batch`-letter batches back to back while another sends `--requests` single
               letters: p50/p95 of the single letters' wait (a batch takes turns of 4 letters, so a single letter
               should wait for one turn, not the batch), and the batches' own time;
* after an abandoned batch - a client sends a `--batch`-letter batch and hangs up 0.5 s later; the wait of the next
               single letter (the server drops the departed batch at its next turn).

With `--threads default,1,default:active` (a comma-separated list of THREADS[:WAIT]; `default`: no --threads flag; WAIT:
the server's $OMP_WAIT_POLICY, e.g. `active`, the spinning it had before `serve` chose passive) it measures a server per
setting, one after the other in the same run, so the settings compare as ratios under the same load.

Any non-200 answer (other than a batch's 503 when it runs out of the server's --timeout) is an error and fails the
benchmark (exit 1). The machine may be shared: each timing waits
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


def store_classifiers(env: dict, workdir: Path, chosen=CLASSIFIERS) -> dict[tuple[str, str], str]:
    keys = {}
    for model, method in chosen:
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


def under_batch(base: str, cid: str, letters: list[str], n: int, batch: int) -> dict:
    """Single letters, one after another, while another client keeps a batch of `batch` letters running."""
    import threading

    stop, batches, waits, errors = threading.Event(), [], [], []

    def batches_back_to_back():
        i = 0
        while not stop.is_set():
            texts = [letters[(i + j) % len(letters)] for j in range(batch)]
            status, answer, ms = post(base, "/classify/batch", {"texts": texts, "classifier": cid}, timeout=600)
            batches.append((status, ms))
            if status not in (200, 503):
                errors.append(f"batch: {status} {answer}")
            i += batch

    wait_quiet()
    worker = threading.Thread(target=batches_back_to_back, daemon=True)
    worker.start()
    time.sleep(1.0)  # the first batch is under way
    for text in letters[100 : 100 + n]:
        status, answer, ms = post(base, "/classify", {"text": text, "classifier": cid})
        if status != 200:
            errors.append(f"single under a batch: {status} {answer}")
            continue
        waits.append(ms)
    stop.set()
    worker.join(timeout=600)
    done = [ms for status, ms in batches if status == 200]
    return {
        "batch_letters": batch,
        "single_under_batch_p50_ms": statistics.median(waits) if waits else None,
        "single_under_batch_p95_ms": pct(waits, 0.95) if waits else None,
        "batches": len(batches),
        "batches_503": sum(status == 503 for status, _ in batches),
        "batch_p50_ms": statistics.median(done) if done else None,
        "errors": errors,
    }


def after_abandoned_batch(base: str, cid: str, letters: list[str], batch: int) -> dict:
    """A batch whose client hangs up 0.5 s after sending it, then one single letter: how long that letter waits."""
    import http.client

    wait_quiet()
    host, port = base.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=5)
    body = json.dumps({"texts": [letters[i % len(letters)] for i in range(200, 200 + batch)], "classifier": cid})
    conn.request("POST", "/classify/batch", body=body, headers={"Content-Type": "application/json"})
    time.sleep(0.5)
    conn.close()  # the client is gone; the server finds out at the batch's next turn
    status, answer, ms = post(base, "/classify", {"text": letters[300], "classifier": cid})
    return {"after_abandoned_batch_ms": ms if status == 200 else None, "errors": [] if status == 200 else [f"{status} {answer}"]}


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
    ap.add_argument("--batch", type=int, default=32, help="letters per batch while single letters are timed (default: 32)")
    ap.add_argument(
        "--classifiers",
        default=",".join(f"{m}-{e}" for m, e in CLASSIFIERS),
        help="which to store and measure, e.g. minilm-logreg (default: all three)",
    )
    ap.add_argument(
        "--threads",
        default="default",
        help="server settings to measure in turn, THREADS[:WAIT] each: default or a thread count, and an "
        "OMP_WAIT_POLICY, e.g. default,1,default:active",
    )
    ap.add_argument("--cache", type=Path, help="cache folder to use (default: a new temporary one)")
    ap.add_argument("--json", type=Path, help="write the results here")
    args = ap.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="clinbench-bench-serve-"))
    env = {**os.environ, "CLINBENCH_CACHE": str(args.cache or workdir / "cache"), "TOKENIZERS_PARALLELISM": "false"}
    chosen = [c for c in CLASSIFIERS if f"{c[0]}-{c[1]}" in args.classifiers.split(",")]
    if not chosen:
        sys.exit(f"--classifiers names none of {', '.join(f'{m}-{e}' for m, e in CLASSIFIERS)}")
    keys = store_classifiers(env, workdir, chosen)

    from engine.data.dataset import default_dataset

    letters = list(default_dataset().texts)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    rows = {}
    for setting in args.threads.split(","):
        threads, _, wait = setting.partition(":")
        flag = [] if threads == "default" else ["--threads", threads]
        suffix = ("" if threads == "default" else f" t={threads}") + (f" {wait}" if wait else "")
        log = (workdir / "server.log").open("w")
        cmd = [sys.executable, "-m", "engine", "serve", "--port", str(port), *flag]
        server_env = {**env, "OMP_WAIT_POLICY": wait.upper()} if wait else env
        server = subprocess.Popen(cmd, cwd=ROOT, env=server_env, stdout=log, stderr=log)
        base = f"http://127.0.0.1:{port}"
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
                name = f"{model}->{method}{suffix}"
                rows[name] = {"model": model, "method": method, "classifier": cid, "threads": threads, "omp_wait_policy": wait or None}
                row = rows[name]
                row.update(measure(base, cid, letters, args.requests, args.clients, args.concurrent_requests))
                for extra in (
                    under_batch(base, cid, letters, args.requests, args.batch),
                    after_abandoned_batch(base, cid, letters, args.batch),
                ):
                    errors = extra.pop("errors")
                    row.update(extra)
                    row["errors"] += errors
        finally:
            server.terminate()
            server.wait(timeout=30)
    print(f"\n{'classifier':18s} {'batch':>5s} {'single p50':>10s} {'p95':>7s} {'batch p50 s':>11s} {'503s':>4s} {'after hang-up':>13s}")
    for name, r in rows.items():
        print(
            f"{name:18s} {r['batch_letters']:5d} {r['single_under_batch_p50_ms'] or float('nan'):10.1f} "
            f"{r['single_under_batch_p95_ms'] or float('nan'):7.1f} {(r['batch_p50_ms'] or float('nan')) / 1e3:11.1f} "
            f"{r['batches_503']:4d} {r['after_abandoned_batch_ms'] or float('nan'):13.1f}"
        )
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
            "batch": args.batch,
            "max_length": 256,
            "protocol": "holdout",
            "threads": args.threads,
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
