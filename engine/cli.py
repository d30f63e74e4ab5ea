"""`python -m engine`: the command-line interface over the engine.

Every command prints a clear one-paragraph error and exits with status 2 when the
input is wrong (bad file, unknown model, malformed spec); nothing stored is touched.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
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
            state["bar"] = tqdm(total=total, desc=stage, unit="letter" if total > 1 else "step", leave=False, file=sys.stderr,
                                disable=None)
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
    p.add_argument("--max-length", type=int, default=DEFAULT_MAX_LENGTH, help="tokens read per letter; longer letters are cut (default: 512)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m engine", description="ClinBench: compare language models for classifying clinical letters, offline.",
                                     epilog=EPILOG)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser("models", help="list bundled models and presets, with offline availability",
                       description="List the model registry: bundled offline models and presets (hub ids), with kind, size and offline availability.")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")

    p = sub.add_parser("data", help="dataset tools (validate)", description="Dataset tools.")
    dsub = p.add_subparsers(dest="data_command", metavar="ACTION")
    v = dsub.add_parser("validate", help="check a CSV/JSONL file and print its validation report",
                        description="Check a file of labelled letters: columns, empty texts, encoding, rare labels, duplicates.")
    v.add_argument("path", help="CSV/TSV/JSONL file, or 'default'")
    v.add_argument("--text-column", default="text", help="column holding the letter text (default: text)")
    v.add_argument("--label-column", default="label", help="column holding the label (default: label)")
    v.add_argument("--label-sep", default=None, help="separator of several labels in one cell (multi-label)")
    v.add_argument("--json", action="store_true", help="print the report as JSON")

    p = sub.add_parser("embed", help="compute (or load cached) embeddings of a dataset",
                       description="Embed every letter of a dataset with one model; results are cached by content.")
    _data_args(p)
    _embed_args(p)
    p.add_argument("--out", type=Path, help="also save the vectors to this .npy file")
    p.add_argument("--no-cache", action="store_true", help="recompute even if cached")

    p = sub.add_parser("evaluate", help="embeddings -> SVC/logreg -> metrics on the test split",
                       description="Embed, fit the classifier on the training split (hyper-parameters chosen by CV inside it), "
                                   "score the test split once, print the metrics and store the artifact.")
    _data_args(p)
    _embed_args(p)
    p.add_argument("--method", default="svc", help="svc or logreg (default: svc)")
    p.add_argument("--no-smote", action="store_true", help="do not oversample minority labels with SMOTE")
    p.add_argument("--class-weight", choices=["balanced"], default=None, help="weight classes inversely to their frequency")
    p.add_argument("--no-grid", action="store_true", help="skip the hyper-parameter search (use C=1, RBF kernel)")
    p.add_argument("--seed", type=int, default=0, help="seed of the split, SMOTE and the search (default: 0)")
    p.add_argument("--test-size", type=float, default=0.2, help="fraction of letters held out for the test (default: 0.2)")
    p.add_argument("--cv-repeats", type=int, default=0, help="also run N x repeated stratified 5-fold CV (mean ± sd); 0 = off")
    p.add_argument("--json", type=Path, dest="json_out", help="write the metrics (macro_f1, macro_f1_ci, per_class, confusion_matrix, ...) here")

    p = sub.add_parser("run", help="run a whole experiment from a YAML/JSON spec",
                       description="Run every model x method step of a spec, one after another, and print a summary table.")
    p.add_argument("spec", type=Path, help="YAML or JSON file: {name, data, models, methods, options}")
    p.add_argument("--json", type=Path, dest="json_out", help="write all step results here")
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
    vectors, stats = features.embed(args.model, ds.texts, pooling=args.pooling, max_length=args.max_length,
                                    use_cache=not args.no_cache, progress=_progress_factory())
    if args.out:
        from engine.storage import atomic_path

        with atomic_path(args.out) as tmp:
            with open(tmp, "wb") as fh:
                np.save(fh, np.asarray(vectors))
    src = "cache" if stats.cache_hit else f"{stats.tokens_per_s:,.0f} tokens/s on {stats.device} ({stats.dtype})"
    print(f"{stats.n_letters} letters -> {stats.dim}-d vectors ({src}); {stats.n_truncated} letter(s) cut to {stats.max_length} tokens")
    print(f"key {stats.key}" + (f"; saved to {args.out}" if args.out else ""))
    return 0


def _print_metrics(title: str, m: dict) -> None:
    lo, hi = m["macro_f1_ci"]
    print(f"\n{title}")
    print(f"  macro-F1 {m['macro_f1']:.3f} (95% CI {lo:.3f}-{hi:.3f})   accuracy {m['accuracy']:.3f}   "
          f"majority baseline macro-F1 {m['baseline']['macro_f1']:.3f}")
    print(f"  {'label':32s} {'precision':>9s} {'recall':>7s} {'F1':>6s} {'n':>5s}")
    for lab, r in m["per_class"].items():
        print(f"  {lab[:32]:32s} {r['precision']:9.3f} {r['recall']:7.3f} {r['f1']:6.3f} {r['support']:5d}")
    if "repeated_cv" in m and m["repeated_cv"].get("mean") is not None:
        cv = m["repeated_cv"]
        print(f"  repeated CV ({cv['n_repeats']}x{cv['n_splits']}): macro-F1 {cv['mean']:.3f} ± {cv['sd']:.3f}")


def cmd_evaluate(args) -> int:
    from engine import experiment

    ds = _load(args)
    opts = {"pooling": args.pooling, "max_length": args.max_length, "smote": not args.no_smote, "class_weight": args.class_weight,
            "grid": not args.no_grid, "seed": args.seed, "test_size": args.test_size, "cv_repeats": args.cv_repeats}
    experiment.parse_spec({"models": [args.model], "methods": [args.method], "options": opts}, where="--method/options")
    res = experiment.evaluate_step(ds, args.model, args.method, opts, progress=_progress_factory())
    _print_metrics(f"{args.model} · {experiment.METHOD_TITLES[args.method]}" + (" (cached)" if res.cache_hit else ""), res.metrics)
    print(f"\nartifact: {res.artifact}")
    if args.json_out:
        from engine.storage import atomic_write_json

        atomic_write_json(args.json_out, {"model": args.model, "method": args.method, "artifact": res.artifact, **res.metrics})
    return 0


def cmd_run(args) -> int:
    from engine import experiment

    spec = experiment.load_spec(args.spec)
    print(f"{spec.name}: {len(spec.steps())} step(s) on {spec.data.path}")
    results = experiment.run(spec, progress_for=lambda step: _progress_factory())
    print(f"\n{'model':14s} {'method':8s} {'macro-F1':>8s}  {'95% CI':13s}  note")
    failed = 0
    for r in results:
        if isinstance(r, dict):
            failed += 1
            print(f"{r['model']:14s} {r['method']:8s} {'-':>8s}  {'':13s}  FAILED: {r['error']}")
        else:
            lo, hi = r.metrics["macro_f1_ci"]
            print(f"{r.model:14s} {r.method:8s} {r.metrics['macro_f1']:8.3f}  {lo:.3f}-{hi:.3f}    {'cached' if r.cache_hit else ''}")
    if args.json_out:
        from engine.storage import atomic_write_json

        atomic_write_json(args.json_out, [r if isinstance(r, dict) else {"model": r.model, "method": r.method, "artifact": r.artifact, **r.metrics}
                                          for r in results])
    return 1 if failed else 0


COMMANDS = {"models": cmd_models, "data": cmd_data, "embed": cmd_embed, "evaluate": cmd_evaluate, "run": cmd_run}


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
    except KeyboardInterrupt:
        print("interrupted; nothing half-written was kept.", file=sys.stderr)
        return 130
