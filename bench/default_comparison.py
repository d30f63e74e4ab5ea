"""The home page's default comparison, end to end through the background worker: how long, and where the time goes.

    .venv/bin/python bench/default_comparison.py                    # the worker alone (as `python -m engine run` does)
    .venv/bin/python bench/default_comparison.py --with-dashboard   # then again with the dashboard open on the Runs page
    .venv/bin/python bench/default_comparison.py --mode dashboard --json out.json
    .venv/bin/python bench/default_comparison.py --step-host both       # steps as fresh interpreters, then forked

Each measurement starts from a fresh, empty cache (CLINBENCH_CACHE in a temporary folder, deleted afterwards): nothing
is a cache hit, the worker is started on demand, as on a fresh machine after scripts/setup.sh, which has made the bundled
models ready (`python -m engine models --prepare`: SmolLM2's GGUF converted once; timed and printed apart). `worker` submits the spec engine.api's
default_comparison() gives (the bundled models x the frozen-embedding methods on the default letters, plus the tf-idf
reference row) through engine.api.submit and polls the run store until the run ends. `dashboard` serves app.py with
Streamlit, opens it in headless Chromium (Playwright), clicks **Run the default comparison** on the home page as a user
would, then keeps the Runs page open (it refreshes the run's progress every few seconds) until the run ends. `both`
runs the two one after the other and reports their ratio.

`--step-host` picks how the worker starts each step's process (engine.runs.stephost, through CLINBENCH_STEP_HOST):
`fork` (the default) forks it from the worker's warm host, which has already imported torch, transformers and
scikit-learn; `fresh` starts a new interpreter per step, as before issue 31; `both` measures fresh, then fork, and
prints their ratio.

Printed per measurement: each step's wall time (the worker's started/finished, so the step's own process start-up is
in it) with its share of the total, the time outside steps (submission, worker start, between steps), the total from
submission to the run's end, the time in embedding extraction (tokenising and the forward passes, from each step's
manifest) and outside it as a share of the total (issue 31 aims at 20 % or less), and the load average before and
after (the machine may be shared: compare runs made at
a similar load). With the dashboard it also prints the CPU seconds the Streamlit server and the browser used during
the run (what competes with the worker for the cores). `--json PATH` writes all of it.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
BROWSER = os.environ.get("BROWSER_PATH", "/usr/bin/chromium")
TIMEOUT_S = 3600
STEP_HOST_ENV = "CLINBENCH_STEP_HOST"  # engine.runs.stephost: how the worker starts a step's process
HOSTS = {"fork": "forked from the warm host", "fresh": "each a fresh interpreter"}


def _stop_workers() -> None:
    """Stop the workers of the current cache's run store (the ones this benchmark started) and wait for them."""
    from engine import api

    for w in api.workers():
        pid = int(w["pid"])
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            continue
        for _ in range(100):
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                break
            time.sleep(0.1)


def _wait_for_run(run_id: int | None, t0: float, find=None):
    """Poll the run store until run `run_id` (or the first run `find()` returns) has ended; the RunView and the time."""
    from engine import api
    from engine.runs.states import Status

    deadline = time.monotonic() + TIMEOUT_S
    last = ""
    while time.monotonic() < deadline:
        if run_id is None and find is not None:
            run_id = find()
        if run_id is not None:
            run = api.get_run(run_id)
            line = " · ".join(f"{s.model}/{s.method} {s.status.value}" for s in run.steps)
            if line != last:
                print(f"  [{time.perf_counter() - t0:6.0f} s] {line}", file=sys.stderr, flush=True)
                last = line
            if all(s.status not in (Status.QUEUED, Status.RUNNING) for s in run.steps):
                return run, time.perf_counter()
        time.sleep(0.25)
    raise TimeoutError(f"the default comparison did not end within {TIMEOUT_S} s")


def _extraction_s(result: dict) -> float:
    """Seconds the step spent extracting embeddings (tokenising and the forward passes), from its artifact's manifest."""
    manifest = Path(result["artifact"]) / "manifest.json" if result.get("artifact") else None
    if manifest is None or not manifest.exists():
        return 0.0
    return float(json.loads(manifest.read_text()).get("timings", {}).get("embed_s") or 0.0)


def _report(run, mode: str, submitted_wall: float, total_s: float, load_before, load_after) -> dict:
    steps = []
    for s in run.steps:
        seconds = (s.finished - s.started) if s.started and s.finished else None
        result = s.result or {}
        steps.append(
            {
                "model": s.model,
                "method": s.method,
                "status": s.status.value,
                "seconds": seconds,
                "share": seconds / total_s if seconds else None,
                "queued_s": (s.started - submitted_wall) if s.started else None,
                "macro_f1": result.get("macro_f1"),
                "embed_cache_hit": result.get("embed_cache_hit"),
                "extraction_s": _extraction_s(result),
                "error": s.error,
            }
        )
    in_steps = sum(x["seconds"] or 0 for x in steps)
    extraction = sum(x["extraction_s"] for x in steps)
    return {
        "mode": mode,
        "step_host": os.environ.get(STEP_HOST_ENV) or "fork",
        "run_id": run.id,
        "total_s": total_s,
        "in_steps_s": in_steps,
        "outside_steps_s": total_s - in_steps,
        "extraction_s": extraction,
        "outside_extraction_s": total_s - extraction,
        "outside_extraction_share": (total_s - extraction) / total_s,
        "steps": steps,
        "prepare_s": PREPARED.get(os.environ.get("CLINBENCH_CACHE", "")),
        "load_before": load_before,
        "load_after": load_after,
        "cpus": os.cpu_count(),
    }


def _print(rep: dict) -> None:
    print(
        f"\n{rep['mode']}, steps {HOSTS[rep['step_host']]}: the default comparison (run {rep['run_id']}), "
        f"load average before {rep['load_before']}, after {rep['load_after']}"
    )
    print(f"  {'model':<10} {'method':<8} {'status':<10} {'seconds':>8} {'share':>6}  {'macro-F1':>8}  embeddings")
    for s in rep["steps"]:
        sec = f"{s['seconds']:8.1f}" if s["seconds"] is not None else f"{'-':>8}"
        share = f"{100 * s['share']:5.1f}%" if s["share"] is not None else f"{'-':>6}"
        f1 = f"{s['macro_f1']:8.3f}" if s["macro_f1"] is not None else f"{'-':>8}"
        hit = {True: "cached", False: "extracted", None: ""}[s["embed_cache_hit"]]
        print(
            f"  {s['model']:<10} {s['method']:<8} {s['status']:<10} {sec} {share}  {f1}  {hit}{'  ' + s['error'][:80] if s['error'] else ''}"
        )
    print(
        f"  {'outside steps (submit, worker start, between steps)':<48} {rep['outside_steps_s']:8.1f} {100 * rep['outside_steps_s'] / rep['total_s']:5.1f}%"
    )
    print(f"  {'total':<48} {rep['total_s']:8.1f}")
    print(
        f"  {'in embedding extraction (tokenising, forward passes)':<48} {rep['extraction_s']:8.1f} {100 * rep['extraction_s'] / rep['total_s']:5.1f}%"
    )
    print(
        f"  {'outside extraction (issue 31 aims at <= 20 %)':<48} {rep['outside_extraction_s']:8.1f} {100 * rep['outside_extraction_share']:5.1f}%"
    )
    if rep.get("prepare_s") is not None:
        print(f"  (before the timer: the bundled models made ready, as scripts/setup.sh does, {rep['prepare_s']:.1f} s)")
    if "server_cpu_s" in rep:
        print(
            f"  CPU seconds used during the run by the Streamlit server {rep['server_cpu_s']:.1f}, by the browser {rep['browser_cpu_s']:.1f}"
        )


PREPARED: dict = {}  # seconds `models --prepare` took in each fresh cache


def _fresh_cache() -> str:
    """A new empty cache, with the bundled models made ready as scripts/setup.sh leaves them (timed apart)."""
    folder = tempfile.mkdtemp(prefix="clinbench-bench-default-")
    os.environ["CLINBENCH_CACHE"] = folder
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-m", "engine", "models", "--prepare"], cwd=ROOT, check=True, capture_output=True)
    PREPARED[folder] = time.perf_counter() - t0
    return folder


def _spec(models: list[str] | None) -> dict:
    """The home page's spec (engine.api.default_comparison), or with only `models` (a quicker check)."""
    from engine import api

    spec = api.default_comparison()
    return {**spec, "models": models} if models else spec


def measure_worker(models: list[str] | None = None) -> dict:
    """Submit the default comparison through engine.api and poll until it ends (what `python -m engine run` does)."""
    from engine import api

    folder = _fresh_cache()
    try:
        load_before = os.getloadavg()
        submitted_wall = time.time()
        t0 = time.perf_counter()
        run_id = api.submit(_spec(models))
        run, t1 = _wait_for_run(run_id, t0)
        return _report(run, "worker", submitted_wall, t1 - t0, [round(x, 2) for x in load_before], [round(x, 2) for x in os.getloadavg()])
    finally:
        _stop_workers()
        shutil.rmtree(folder, ignore_errors=True)


def _cpu_seconds(procs) -> float:
    """User + system CPU seconds the given processes have used so far (gone ones count 0)."""
    import psutil

    total = 0.0
    for proc in procs:
        try:
            t = proc.cpu_times()
            total += t.user + t.system
        except psutil.Error:
            pass
    return total


def _browser_procs(since: float) -> list:
    """Chromium processes started after `since` (the benchmark's own headless browser)."""
    import psutil

    return [p for p in psutil.process_iter(["name", "create_time"]) if "chrom" in (p.info["name"] or "") and p.info["create_time"] >= since]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def measure_dashboard(models: list[str] | None = None) -> dict:
    """Serve app.py, click the home page's button in headless Chromium, keep the Runs page open until the run ends.
    With `models` (a quicker check) the run is submitted through engine.api instead of the button, the Runs page open."""
    from playwright.sync_api import expect, sync_playwright

    from engine import api

    folder = _fresh_cache()
    port = _free_port()
    log = open(Path(folder) / "streamlit.log", "wb")  # noqa: SIM115 (the server writes to it until the end)
    server = subprocess.Popen(
        [sys.executable, "-m", "streamlit", "run", "app.py", "--server.headless", "true", "--server.port", str(port)],
        cwd=ROOT,
        env={**os.environ, "CLINBENCH_CACHE": folder},
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                if urllib.request.urlopen(f"{base}/_stcore/health", timeout=2).read() == b"ok":
                    break
            except OSError:
                pass
            if time.monotonic() > deadline or server.poll() is not None:
                raise RuntimeError(f"streamlit did not start: {(Path(folder) / 'streamlit.log').read_text()[-2000:]}")
            time.sleep(0.5)
        import psutil

        server_proc = psutil.Process(server.pid)
        launched = time.time() - 1
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=BROWSER, args=["--no-sandbox"])
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.goto(base)
            button = page.get_by_role("button", name="Run the default comparison")
            expect(button).to_be_visible(timeout=120_000)
            load_before = os.getloadavg()
            browser_procs = _browser_procs(launched)
            cpu_before = _cpu_seconds([server_proc]), _cpu_seconds(browser_procs)
            submitted_wall = time.time()
            t0 = time.perf_counter()
            if models:
                api.submit(_spec(models))
            else:
                button.click()
                expect(page.get_by_text("queued. Open the Runs page")).to_be_visible(timeout=120_000)
            page.goto(f"{base}/Runs")  # the page a user watches: progress refreshed by st.fragment while the run runs
            runs = lambda: next((r.id for r in api.list_runs()), None)  # noqa: E731 (the cache is this measurement's own)
            run, t1 = _wait_for_run(None, t0, find=runs)
            cpu_after = _cpu_seconds([server_proc]), _cpu_seconds(browser_procs + _browser_procs(launched))
            browser.close()
        rep = _report(run, "dashboard", submitted_wall, t1 - t0, [round(x, 2) for x in load_before], [round(x, 2) for x in os.getloadavg()])
        rep["server_cpu_s"], rep["browser_cpu_s"] = cpu_after[0] - cpu_before[0], cpu_after[1] - cpu_before[1]
        return rep
    finally:
        server.terminate()
        try:
            server.wait(15)
        except subprocess.TimeoutExpired:
            server.kill()
        log.close()
        _stop_workers()
        shutil.rmtree(folder, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--mode", choices=("worker", "dashboard", "both"), default="worker", help="what to measure (default: worker)")
    ap.add_argument("--with-dashboard", action="store_true", help="the same as --mode both: the worker alone, then with the dashboard")
    ap.add_argument("--models", nargs="+", help="only these models (a quicker check; default: the bundled ones, as the home page)")
    ap.add_argument(
        "--step-host",
        choices=("fork", "fresh", "both"),
        default="fork",
        help="how the worker starts each step: forked from its warm host (the default), a fresh interpreter (as before "
        "issue 31), or both, each mode measured with fresh first, then fork",
    )
    ap.add_argument("--json", dest="json_out", help="write the measurements here")
    args = ap.parse_args(argv)
    mode = "both" if args.with_dashboard else args.mode
    hosts = ["fresh", "fork"] if args.step_host == "both" else [args.step_host]
    reports = []
    for host in hosts:
        os.environ[STEP_HOST_ENV] = host  # the worker that submitting starts inherits it
        if mode in ("worker", "both"):
            reports.append(measure_worker(args.models))
            _print(reports[-1])
        if mode in ("dashboard", "both"):
            reports.append(measure_dashboard(args.models))
            _print(reports[-1])
    out: dict = {"measurements": reports}
    by = {(r["mode"], r["step_host"]): r["total_s"] for r in reports}
    print()
    for host in hosts:
        if ("worker", host) in by and ("dashboard", host) in by:
            ratio = by[("dashboard", host)] / by[("worker", host)]
            out[f"dashboard_over_worker_{host}"] = ratio
            print(
                f"steps {HOSTS[host]}: dashboard / worker alone {ratio:.2f}x ({by[('dashboard', host)]:.0f} s / {by[('worker', host)]:.0f} s)"
            )
    for m in ("worker", "dashboard"):
        if (m, "fork") in by and (m, "fresh") in by:
            ratio = by[(m, "fork")] / by[(m, "fresh")]
            out[f"fork_over_fresh_{m}"] = ratio
            print(f"{m}: forked steps / fresh steps {ratio:.2f}x ({by[(m, 'fork')]:.0f} s / {by[(m, 'fresh')]:.0f} s)")
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
