"""`python -m engine`: the command-line interface over the engine.

Every command prints a clear one-paragraph error and exits with status 2 when the
input is wrong (bad file, unknown model, malformed spec); nothing stored is touched.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sqlite3
import sys
from pathlib import Path

from engine.errors import ClinBenchError

EPILOG = "Cache folder: cache/ at the repo root, or $CLINBENCH_CACHE. Docs: README.md."


def _progress_factory():
    """A (done, total, stage) callback drawing one tqdm bar per stage on stderr."""
    from tqdm import tqdm

    state = {"bar": None, "stage": None}

    def progress(done: int, total: int, stage: str) -> None:
        if state["stage"] != stage:
            if state["bar"] is not None:
                state["bar"].close()
            state["bar"] = tqdm(total=total, desc=stage, unit="letter" if total > 1 else "step", leave=False, file=sys.stderr, disable=None)
            state["stage"] = stage
        bar = state["bar"]
        bar.total = total
        bar.n = done
        bar.refresh()
        if done >= total and stage in ("done", "loaded from cache"):
            bar.close()

    return progress


def _data_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", required=True, help="CSV/TSV/JSONL file of letters, or 'default' for the bundled dataset")
    p.add_argument("--text-column", default="text", help="column holding the letter text (default: text)")
    p.add_argument("--label-column", default="label", help="column holding the label (default: label)")
    p.add_argument("--label-sep", default=None, help="separator of several labels in one cell (multi-label), e.g. '|'")


def _embed_args(p: argparse.ArgumentParser) -> None:
    from engine.features import DEFAULT_MAX_LENGTH, POOLINGS

    p.add_argument("--model", required=True, help="registry name (minilm, smollm2, biobert, ...), hub id 'org/name', or local folder")
    p.add_argument("--pooling", choices=POOLINGS, default="mean", help="how token vectors become one letter vector (default: mean)")
    p.add_argument(
        "--max-length", type=int, default=DEFAULT_MAX_LENGTH, help="tokens read per letter; longer letters are cut (default: 512)"
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m engine", description="ClinBench: compare language models for classifying clinical letters, offline.", epilog=EPILOG
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser(
        "models",
        help="list bundled models and presets, with offline availability",
        description="List the model registry: bundled offline models and presets (hub ids), with kind, size and offline availability.",
    )
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")

    p = sub.add_parser("data", help="dataset tools (validate)", description="Dataset tools.")
    dsub = p.add_subparsers(dest="data_command", metavar="ACTION")
    v = dsub.add_parser(
        "validate",
        help="check a CSV/JSONL file and print its validation report",
        description="Check a file of labelled letters: columns, empty texts, encoding, rare labels, duplicates.",
    )
    v.add_argument("path", help="CSV/TSV/JSONL file, or 'default'")
    v.add_argument("--text-column", default="text", help="column holding the letter text (default: text)")
    v.add_argument("--label-column", default="label", help="column holding the label (default: label)")
    v.add_argument("--label-sep", default=None, help="separator of several labels in one cell (multi-label)")
    v.add_argument("--json", action="store_true", help="print the report as JSON")

    p = sub.add_parser(
        "embed",
        help="compute (or load cached) embeddings of a dataset",
        description="Embed every letter of a dataset with one model; results are cached by content.",
    )
    _data_args(p)
    _embed_args(p)
    p.add_argument("--out", type=Path, help="also save the vectors to this .npy file")
    p.add_argument("--no-cache", action="store_true", help="recompute even if cached")

    p = sub.add_parser(
        "evaluate",
        help="one model x method in this process -> metrics on the test split",
        description="svc/logreg: embed, fit the classifier on the training split (hyper-parameters chosen by CV "
        "inside it). linear-probe/lora: train the model's classification head (and LoRA adapters), "
        "choosing the epoch on a validation split carved from the training split. lora-svc: LoRA-tuned "
        "embeddings -> SVC. domain-adapt: LoRA on the language-model objective, perplexity before/after. "
        "The test split is scored once; the artifact is stored.",
    )
    _data_args(p)
    _embed_args(p)
    p.add_argument("--method", default="svc", help="svc, logreg, linear-probe, lora, lora-svc or domain-adapt (default: svc)")
    p.add_argument("--no-smote", action="store_true", help="do not oversample minority labels with SMOTE")
    p.add_argument("--class-weight", choices=["balanced"], default=None, help="weight classes inversely to their frequency")
    p.add_argument("--no-grid", action="store_true", help="skip the hyper-parameter search (use C=1, RBF kernel)")
    p.add_argument("--seed", type=int, default=0, help="seed of the split, SMOTE and the search (default: 0)")
    p.add_argument("--test-size", type=float, default=0.2, help="fraction of letters held out for the test (default: 0.2)")
    p.add_argument("--cv-repeats", type=int, default=0, help="also run N x repeated stratified 5-fold CV (mean ± sd); 0 = off")
    ft = p.add_argument_group("fine-tuning (linear-probe, lora, lora-svc, domain-adapt)")
    ft.add_argument("--epochs", type=int, default=None, help="most epochs (default: 8 probe, 4 LoRA, 2 domain-adapt; early stopping)")
    ft.add_argument("--learning-rate", type=float, default=None, help="default: 1e-2 probe, 5e-4 LoRA (head 10x), 3e-4 domain-adapt")
    ft.add_argument("--batch-size", type=int, default=8, help="letters per batch (default: 8)")
    ft.add_argument("--grad-accum", type=int, default=1, help="batches per optimiser step (default: 1)")
    ft.add_argument("--warmup-ratio", type=float, default=0.1, help="fraction of steps with a rising learning rate (default: 0.1)")
    ft.add_argument("--lora-r", type=int, default=8, help="LoRA rank (default: 8)")
    ft.add_argument("--lora-alpha", type=int, default=16, help="LoRA alpha (default: 16)")
    ft.add_argument("--lora-dropout", type=float, default=0.1, help="LoRA dropout (default: 0.1)")
    ft.add_argument("--target-modules", default=None, help="comma-separated LoRA targets (default: by architecture, e.g. query,value)")
    ft.add_argument("--no-class-weighted-loss", action="store_true", help="plain cross-entropy instead of class-weighted")
    ft.add_argument("--patience", type=int, default=2, help="epochs without a better validation score before stopping (default: 2)")
    ft.add_argument("--val-size", type=float, default=0.15, help="fraction of the training split used for validation (default: 0.15)")
    p.add_argument(
        "--json", type=Path, dest="json_out", help="write the metrics (macro_f1, macro_f1_ci, per_class, confusion_matrix, ...) here"
    )

    p = sub.add_parser(
        "submit",
        help="queue an experiment spec as a background run; prints the run id last",
        description="Check a spec (data, model names) and queue it as a background run; a worker process is started "
        "if none is alive. The run id is printed alone on the last line.",
    )
    p.add_argument("spec", type=Path, help="YAML or JSON file: {name, data, models, methods, options}")
    p.add_argument("--no-worker", action="store_true", help="only queue; do not start a worker")

    p = sub.add_parser(
        "run",
        help="queue an experiment spec and follow it with progress bars until it ends",
        description="Queue a spec as a background run (like submit) and follow it until every step has ended. "
        "Ctrl-C stops following; the run goes on in the background.",
    )
    p.add_argument("spec", type=Path, help="YAML or JSON file: {name, data, models, methods, options}")
    p.add_argument("--json", type=Path, dest="json_out", help="write all step results here")

    p = sub.add_parser(
        "runs",
        help="list runs; show, cancel, resume, delete one, or print its log",
        description="Runs in the run store (newest first). With an action, act on one run.",
    )
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    rsub = p.add_subparsers(dest="runs_command", metavar="ACTION")
    for name, text in (
        ("show", "a run's status, steps, progress and errors, and its worker's pid while it runs"),
        ("cancel", "stop a run: queued steps are cancelled, the running step stops within 5 s"),
        ("resume", "queue a run's interrupted, cancelled and failed steps again (finished steps are kept)"),
        ("logs", "print a run's log (step starts and ends, warnings, tracebacks)"),
        ("delete", "forget a finished run and its log (its cached results stay)"),
    ):
        a = rsub.add_parser(name, help=text, description=text[0].upper() + text[1:] + ".")
        a.add_argument("run_id", type=int, metavar="ID", help="run id, as listed by `runs`")
        if name == "show":
            a.add_argument("--json", action="store_true", help="print JSON (keys include status, steps, worker_pid)")

    p = sub.add_parser(
        "worker",
        help="serve queued runs in this terminal (workers otherwise start on demand)",
        description="Execute queued steps, each in a child process, until stopped with Ctrl-C. Workers start by "
        "themselves when runs are queued; at most $CLINBENCH_WORKERS (default 1) serve at once.",
    )
    p.add_argument("--idle-exit", type=float, default=0.0, metavar="SECONDS", help="leave after this long with nothing queued (0 = never)")
    p.add_argument("--step", help=argparse.SUPPRESS)  # internal: RUN:IDX, the child process that executes one step
    return parser


def cmd_models(args) -> int:
    from engine import models
    from engine.devices import choose

    rows = [models.describe(e) for e in models.registry()]
    placement = choose()
    if args.json:
        print(json.dumps({"placement": {"device": placement.device, "dtype": placement.dtype}, "models": rows}, indent=2))
        return 0
    print(f"Device: {placement.describe()}\n")
    print(f"{'name':13s} {'source':8s} {'kind':8s} {'params':>8s}  {'offline':7s}  reason")
    for r in rows:
        params = f"{r['params'] / 1e6:.0f}M" if r["params"] else "?"
        print(f"{r['name']:13s} {r['source']:8s} {r['kind'] or '?':8s} {params:>8s}  {'yes' if r['offline'] else 'no':7s}  {r['reason']}")
    print("\nAlso accepted: any hub id ('org/name') or local model folder.")
    return 0


def cmd_data(args) -> int:
    from engine import data

    if args.data_command != "validate":
        print("usage: python -m engine data validate PATH [--text-column C] [--label-column C]", file=sys.stderr)
        return 2
    path = data.DEFAULT_DATASET if args.path == data.DEFAULT_NAME else args.path
    report = data.validate_file(path, args.text_column, args.label_column, label_sep=args.label_sep)
    if args.json:
        print(json.dumps(report.to_dict(), indent=2))
    else:
        print(f"{report.path}: {report.n_rows} rows, {len(report.class_counts)} labels{' (multi-label)' if report.multi_label else ''}")
        for lab, n in report.class_counts.items():
            print(f"  {lab:40s} {n}")
        for issue in report.issues:
            print(f"{issue.level.upper()}: {issue.message}")
        print("OK: usable." if report.ok else f"NOT USABLE: {len(report.errors)} error(s) to fix.")
    return 0 if report.ok else 1


def _load(args):
    from engine import data

    return data.load_dataset(args.data, args.text_column, args.label_column, label_sep=args.label_sep)


def cmd_embed(args) -> int:
    import numpy as np

    from engine import features

    ds = _load(args)
    vectors, stats = features.embed(
        args.model, ds.texts, pooling=args.pooling, max_length=args.max_length, use_cache=not args.no_cache, progress=_progress_factory()
    )
    if args.out:
        from engine.storage import atomic_path

        with atomic_path(args.out) as tmp, open(tmp, "wb") as fh:
            np.save(fh, np.asarray(vectors))
    src = "cache" if stats.cache_hit else f"{stats.tokens_per_s:,.0f} tokens/s on {stats.device} ({stats.dtype})"
    print(f"{stats.n_letters} letters -> {stats.dim}-d vectors ({src}); {stats.n_truncated} letter(s) cut to {stats.max_length} tokens")
    print(f"key {stats.key}" + (f"; saved to {args.out}" if args.out else ""))
    return 0


def _print_metrics(title: str, m: dict) -> None:
    lo, hi = m["macro_f1_ci"]
    print(f"\n{title}")
    print(
        f"  macro-F1 {m['macro_f1']:.3f} (95% CI {lo:.3f}-{hi:.3f})   accuracy {m['accuracy']:.3f}   "
        f"majority baseline macro-F1 {m['baseline']['macro_f1']:.3f}"
    )
    print(f"  {'label':32s} {'precision':>9s} {'recall':>7s} {'F1':>6s} {'n':>5s}")
    for lab, r in m["per_class"].items():
        print(f"  {lab[:32]:32s} {r['precision']:9.3f} {r['recall']:7.3f} {r['f1']:6.3f} {r['support']:5d}")
    if "repeated_cv" in m and m["repeated_cv"].get("mean") is not None:
        cv = m["repeated_cv"]
        print(f"  repeated CV ({cv['n_repeats']}x{cv['n_splits']}): macro-F1 {cv['mean']:.3f} ± {cv['sd']:.3f}")


def cmd_evaluate(args) -> int:
    from engine import experiment

    ds = _load(args)
    opts = {
        "pooling": args.pooling,
        "max_length": args.max_length,
        "smote": not args.no_smote,
        "class_weight": args.class_weight,
        "grid": not args.no_grid,
        "seed": args.seed,
        "test_size": args.test_size,
        "cv_repeats": args.cv_repeats,
        "epochs": args.epochs,
        "learning_rate": args.learning_rate,
        "batch_size": args.batch_size,
        "grad_accum": args.grad_accum,
        "warmup_ratio": args.warmup_ratio,
        "lora_r": args.lora_r,
        "lora_alpha": args.lora_alpha,
        "lora_dropout": args.lora_dropout,
        "target_modules": [t.strip() for t in args.target_modules.split(",") if t.strip()] if args.target_modules else None,
        "class_weighted_loss": not args.no_class_weighted_loss,
        "patience": args.patience,
        "val_size": args.val_size,
    }
    spec = experiment.parse_spec({"models": [args.model], "methods": [args.method], "options": opts}, where="--method/options")
    res = experiment.execute(spec, spec.steps()[0], dataset=ds, progress=_progress_factory())
    title = f"{args.model} · {experiment.METHOD_TITLES[args.method]}" + (" (cached)" if res.cache_hit else "")
    if "macro_f1" in res.metrics:
        _print_metrics(title, res.metrics)
    else:
        m = res.metrics
        print(
            f"\n{title}\n  perplexity on the test letters: {m['perplexity_before']:.2f} before, {m['perplexity_after']:.2f} after"
            f"\n  adapted model (usable with --model): {m['adapted_model']}"
        )
    if res.manifest.get("training"):
        tr = res.manifest["training"]
        print(
            f"  training: best epoch {tr['best_epoch']} of {tr['epochs_run']} run" + (" (stopped early)" if tr.get("stopped_early") else "")
        )
    print(f"\nartifact: {res.artifact}")
    if args.json_out:
        from engine.storage import atomic_write_json

        atomic_write_json(args.json_out, {"model": args.model, "method": args.method, "artifact": res.artifact, **res.metrics})
    return 0


def _fmt_s(seconds: float | None) -> str:
    if seconds is None:
        return ""
    seconds = int(round(seconds))
    return (
        f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
        if seconds >= 3600
        else (f"{seconds // 60}m{seconds % 60:02d}s" if seconds >= 60 else f"{seconds}s")
    )


def _step_line(s: dict) -> str:
    p, r = s["progress"], s["result"]
    if s["status"] == "done" and r and "macro_f1" in r:
        lo, hi = r["macro_f1_ci"]
        detail = f"macro-F1 {r['macro_f1']:.3f} ({lo:.3f}-{hi:.3f})" + ("  cached" if r.get("cache_hit") else "")
    elif s["status"] == "done" and r and "perplexity_after" in r:
        detail = f"perplexity {r['perplexity_before']:.1f} -> {r['perplexity_after']:.1f}; model {r['adapted_model']}"
    elif s["status"] == "running":
        detail = f"{p['stage']} {p['done']}/{p['total']}" if p["total"] else p["stage"]
        if p["rate"]:
            detail += f"  {p['rate']:.1f}/s"
        if p["eta_s"] is not None:
            detail += f"  ETA {_fmt_s(p['eta_s'])}"
    else:
        detail = s["error"] or ""
    return f"  [{s['index'] + 1}] {s['status']:11s} {s['title']:52s} {_fmt_s(s['seconds']):>6s}  {detail}"


def _when(t: float | None) -> str:
    import time

    return time.strftime("%Y-%m-%d %H:%M", time.localtime(t)) if t else ""


def cmd_submit(args) -> int:
    from engine import experiment, jobs

    spec = experiment.load_spec(args.spec)
    run_id = jobs.submit(spec, start_worker=not args.no_worker)
    print(f"queued run {run_id} '{spec.name}': {len(spec.steps())} step(s). Follow it with `python -m engine runs show {run_id}`.")
    print(run_id)
    return 0


def _follow(run_id: int) -> dict:
    """Poll a run until it ends, drawing a progress bar for the running step and a line per finished step."""
    import time

    from engine import jobs

    reported: set[int] = set()
    bars: dict[int, object] = {}
    last_check = time.monotonic()
    while True:
        run = jobs.get_run(run_id)
        for s in run["steps"]:
            i = s["index"]
            if s["status"] == "running":
                bars.setdefault(i, _progress_factory())
                p = s["progress"]
                if p["total"]:
                    bars[i](p["done"], p["total"], p["stage"])
            elif s["status"] in jobs.FINAL_STATES and i not in reported:
                reported.add(i)
                print(_step_line(s), flush=True)
        if run["status"] in jobs.FINAL_STATES:
            return run
        if run["status"] == "queued" and time.monotonic() - last_check > 5:
            jobs.ensure_worker()  # e.g. the worker left or was killed before taking this run
            last_check = time.monotonic()
        time.sleep(0.5)


def _print_results_table(run: dict) -> None:
    print(f"\n{'model':14s} {'method':12s} {'macro-F1':>8s}  {'95% CI':13s}  note")
    for s in run["steps"]:
        r = s["result"]
        if s["status"] == "done" and r and "macro_f1" in r:
            lo, hi = r["macro_f1_ci"]
            print(
                f"{s['model'][:14]:14s} {s['method']:12s} {r['macro_f1']:8.3f}  {lo:.3f}-{hi:.3f}    {'cached' if r.get('cache_hit') else ''}"
            )
        elif s["status"] == "done" and r:
            print(
                f"{s['model'][:14]:14s} {s['method']:12s} {'-':>8s}  {'':13s}  perplexity {r['perplexity_before']:.1f} -> "
                f"{r['perplexity_after']:.1f}, model {r['adapted_model']}"
            )
        else:
            print(f"{s['model'][:14]:14s} {s['method']:12s} {'-':>8s}  {'':13s}  {s['status'].upper()}: {s['error'] or ''}")


def cmd_run(args) -> int:
    from engine import experiment, jobs

    spec = experiment.load_spec(args.spec)
    run_id = jobs.submit(spec)
    print(
        f"run {run_id} '{spec.name}': {len(spec.steps())} step(s) on {spec.data.path}; following it "
        f"(Ctrl-C stops following, the run goes on)",
        flush=True,
    )
    try:
        run = _follow(run_id)
    except KeyboardInterrupt:
        print(
            f"\nstopped following; run {run_id} goes on in the background. `python -m engine runs show {run_id}` shows it, "
            f"`python -m engine runs cancel {run_id}` stops it.",
            file=sys.stderr,
        )
        return 130
    _print_results_table(run)
    print(f"\nrun {run_id}: {run['status']}" + ("" if run["status"] == "done" else f". Log: python -m engine runs logs {run_id}"))
    if args.json_out:
        from engine.storage import atomic_write_json

        atomic_write_json(
            args.json_out,
            [
                {
                    "model": s["model"],
                    "method": s["method"],
                    "status": s["status"],
                    **({"error": s["error"]} if s["error"] else {}),
                    **(s["result"] or {}),
                }
                for s in run["steps"]
            ],
        )
    return 0 if run["status"] == "done" else 1


def cmd_runs(args) -> int:
    from engine import jobs

    action = args.runs_command
    if action is None:
        runs = jobs.list_runs()
        if args.json:
            print(json.dumps(runs, indent=2))
            return 0
        if not runs:
            print("No runs yet. Queue one with `python -m engine submit SPEC` or `python -m engine run SPEC`.")
            return 0
        print(f"{'id':>4s}  {'status':11s} {'steps':>7s}  {'created':16s}  name")
        for r in runs:
            c = r["counts"]
            extra = ", ".join(f"{c[k]} {k}" for k in ("failed", "cancelled", "interrupted") if c[k])
            print(
                f"{r['id']:4d}  {r['status']:11s} {c['done']:>3d}/{r['n_steps']:<3d}  {_when(r['created']):16s}  {r['name']}"
                + (f"  ({extra})" if extra else "")
            )
        return 0
    if action == "show":
        run = jobs.get_run(args.run_id)
        if args.json:
            print(json.dumps(run, indent=2))
            return 0
        print(
            f"run {run['id']} '{run['name']}': {run['status']}"
            + (" (cancel requested)" if run["cancel_requested"] and run["status"] == "running" else "")
        )
        print(f"  created {_when(run['created'])}" + (f", worker pid {run['worker_pid']}" if run["worker_pid"] else ""))
        for s in run["steps"]:
            print(_step_line(s))
        print(f"  log: python -m engine runs logs {run['id']}")
        return 0
    if action == "cancel":
        run = jobs.cancel(args.run_id)
        if run["status"] in jobs.FINAL_STATES:
            print(f"run {run['id']} is {run['status']}; nothing left to cancel.")
        else:
            print(f"run {run['id']}: cancel requested; queued steps are cancelled and the running step stops within seconds.")
        return 0
    if action == "resume":
        run = jobs.resume(args.run_id)
        queued = [s for s in run["steps"] if s["status"] == "queued"]
        print(
            f"run {run['id']}: {len(queued)} step(s) queued again; {run['counts']['done']} finished step(s) kept."
            if queued
            else f"run {run['id']} is {run['status']}; nothing to resume."
        )
        return 0
    if action == "logs":
        print(jobs.read_log(args.run_id), end="")
        return 0
    if action == "delete":
        jobs.delete(args.run_id)
        print(f"run {args.run_id} deleted (cached embeddings and evaluations are kept).")
        return 0
    return 2


def cmd_worker(args) -> int:
    from engine import worker

    if args.step:
        try:
            run_id, idx = (int(x) for x in args.step.split(":"))
        except ValueError:
            raise ClinBenchError(f"--step expects RUN:IDX (two whole numbers), not {args.step!r}.") from None
        return worker.execute_child(run_id, idx)
    if args.idle_exit < 0:
        raise ClinBenchError("--idle-exit must be 0 (never) or a number of seconds.")
    return worker.serve(idle_exit=args.idle_exit)


COMMANDS = {
    "models": cmd_models,
    "data": cmd_data,
    "embed": cmd_embed,
    "evaluate": cmd_evaluate,
    "submit": cmd_submit,
    "run": cmd_run,
    "runs": cmd_runs,
    "worker": cmd_worker,
}


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not args.command:
        parser.print_help()
        return 2
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    logging.getLogger("transformers").setLevel(logging.ERROR)
    try:
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()
    except ImportError:
        pass
    try:
        return COMMANDS[args.command](args)
    except ClinBenchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except sqlite3.Error as exc:
        from engine.jobs import db_path

        print(
            f"error: the run store {db_path()} could not be used ({exc}). If another program holds it, retry; if the disk "
            "is full, free space.",
            file=sys.stderr,
        )
        return 2
    except KeyboardInterrupt:
        print("interrupted; nothing half-written was kept.", file=sys.stderr)
        return 130
