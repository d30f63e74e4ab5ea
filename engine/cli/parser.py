"""`python -m engine`: the command-line interface, a thin layer over engine.api.

The option flags of `evaluate` and `embed` are derived from engine.options (one flag per option,
grouped by concern). Every command prints a clear one-paragraph error and exits with status 2
when the input is wrong (bad file, unknown model, malformed spec); nothing stored is touched.
`worker` starts the executor itself (engine.worker) rather than calling the front door: it is
what the front door's runs are served by. Commands import the engine when they run, so `--help`
stays quick.
"""

from __future__ import annotations

import argparse
import logging
import os
import sqlite3
import sys
import warnings
from pathlib import Path

from engine.cli import commands as out
from engine.errors import ClinBenchError
from engine.options import flags, serving

EPILOG = "Cache folder: cache/ at the repo root, or $CLINBENCH_CACHE. Docs: README.md and docs/."


def _data_args(p: argparse.ArgumentParser, *, positional: bool = False) -> None:
    if positional:
        p.add_argument("path", help="CSV/TSV/JSONL/JSON/XLSX file, or 'default'")
    else:
        p.add_argument("--data", required=True, help="CSV/TSV/JSONL/JSON/XLSX file of letters, or 'default' for the bundled dataset")
    p.add_argument(
        "--sheet", metavar="NAME", help="the sheet of an .xlsx workbook to read (default: its first); formulas read as their saved values"
    )
    p.add_argument("--text-column", default="text", help="column holding the letter text (default: text)")
    p.add_argument("--label-column", default="label", help="column holding the label (default: label; ignored with --label-columns)")
    p.add_argument("--label-sep", default=None, help="separator of several labels in one cell (multi-label), e.g. '|'")
    p.add_argument(
        "--label-columns",
        metavar="A,B,C",
        help="multi-label as one 0/1 column per label (1/true/yes: the letter has it; 0/false/no or blank: not); the labels are "
        "the column names, --label-column is ignored. In multi-label data a letter with no label is kept (a 'no label' outcome)",
    )
    p.add_argument(
        "--text-template",
        type=flags.newlines,
        metavar="TEMPLATE",
        help="build each letter from several columns instead of --text-column, e.g. 'Question: {QUESTION}\\nContext: {CONTEXTS}' "
        "(list values joined with newlines)",
    )
    split = p.add_mutually_exclusive_group()
    split.add_argument("--split-column", metavar="COL", help="column marking each row train or test: the split --protocol fixed scores")
    split.add_argument(
        "--test-ids",
        metavar="FILE",
        help="file of the test rows' ids (JSON object keys, JSON list, or one per line), matched against the 'id' column; the "
        "other rows train (for --protocol fixed)",
    )
    p.add_argument(
        "--answer-column",
        metavar="COL",
        help="column of reference answers (never part of a letter): what domain-adapt's generated answers are scored against",
    )
    p.add_argument(
        "--subgroup-column",
        metavar="COL",
        help="column of subgroups (site, sex, age band, note type; never part of a letter): the headline metric with its 95%% CI "
        "for each of its values, and the gap between the best and the worst",
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
    p.add_argument("--prepare", action="store_true", help="make the bundled models ready in the cache (scripts/setup.sh runs it)")

    p = sub.add_parser(
        "methods", help="list the methods a run can use", description="List the methods (step kinds): name, stage, what each does."
    )
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")

    p = sub.add_parser("data", help="dataset tools (validate)", description="Dataset tools.")
    dsub = p.add_subparsers(dest="data_command", metavar="ACTION")
    v = dsub.add_parser(
        "validate",
        help="check a CSV/JSONL file and print its validation report",
        description="Check a file of labelled letters: columns, empty texts, encoding, rare labels, duplicates; for multi-label "
        "data (--label-sep, JSON lists, --label-columns) also labels per letter, letters with no label and label co-occurrence.",
    )
    _data_args(v, positional=True)
    v.add_argument("--json", action="store_true", help="print the report as JSON")

    p = sub.add_parser(
        "embed",
        help="compute (or load cached) embeddings of a dataset",
        description="Embed every letter of a dataset with one model; results are cached by content.",
    )
    _data_args(p)
    p.add_argument("--model", required=True, help="registry name (minilm, smollm2, biobert, ...), hub id 'org/name', or local folder")
    flags.add_arguments(p, groups=("embedding",))
    p.add_argument("--out", type=Path, help="also save the vectors to this .npy file")
    p.add_argument("--no-cache", action="store_true", help="recompute even if cached")

    p = sub.add_parser(
        "evaluate",
        help="one model x method in this process -> metrics on letters it was not trained on (cv or holdout)",
        description="Run one method on one model here and now, and print its scores on letters it was not trained on: "
        "cross-validation (every letter scored once per repeat) or one held-out test split (--protocol; auto picks cv below "
        "500 letters). svc/logreg: embed, fit the classifier on each training part (hyper-parameters chosen by CV inside it). "
        "linear-probe/lora: train the model's classification head (and LoRA adapters), choosing the epoch on a validation "
        "part carved from each training part. After cv every method is trained once more on every letter (the stored classifier). "
        "lora-svc: LoRA-tuned embeddings -> SVC. domain-adapt: LoRA on the language-model objective, perplexity before/after. "
        "adapt-svc: that adaptation on each fold's training letters, then the SVC on the adapted model's vectors. "
        "The artifact is stored (and reused by runs with the same options).",
    )
    _data_args(p)
    p.add_argument("--model", required=True, help="registry name (minilm, smollm2, biobert, ...), hub id 'org/name', or local folder")
    p.add_argument("--method", default="svc", help="a method name; `python -m engine methods` lists them (default: svc)")
    flags.add_arguments(p, groups=flags.IN_PROCESS)
    p.add_argument(
        "--json", type=Path, dest="json_out", help="write the metrics (macro_f1, macro_f1_ci, per_class, confusion_matrix, ...) here"
    )

    for name, text in (
        ("submit", "queue an experiment spec as a background run; prints the run id last"),
        ("run", "queue an experiment spec and follow it with progress bars until it ends"),
    ):
        p = sub.add_parser(
            name,
            help=text,
            description=text[0].upper() + text[1:] + ". A worker process is started if none is alive; Ctrl-C only stops following.",
        )
        p.add_argument("spec", type=Path, help="YAML or JSON file: {name, data, models, methods, options}")
        flags.add_arguments(p, groups=("execution",))  # given flags override the spec's (e.g. --executor ray)
        if name == "submit":
            p.add_argument("--no-worker", action="store_true", help="only queue; do not start a worker")
        else:
            p.add_argument("--json", type=Path, dest="json_out", help="write all step results here")

    p = sub.add_parser(
        "runs",
        help="list runs; show, cancel, resume, delete one, or print its log",
        description="Runs in the run store (newest first). With an action, act on one run.",
    )
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    rsub = p.add_subparsers(dest="runs_command", metavar="ACTION")
    for name, text in (
        ("show", "a run's status, steps, progress, errors and curves, and its worker's pid while it runs"),
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
        "predict",
        help="classify letters with stored classifiers (probabilities per label)",
        description="Classify one letter with trained classifiers: those of a run (--run) or named by key (--evaluation). The letter "
        "comes from --text, --file, or standard input; it is classified in memory and never stored.",
    )
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("--run", type=int, metavar="ID", help="every classifier a run produced")
    which.add_argument(
        "--evaluation", nargs="+", metavar="KEY", help="evaluation keys (artifact folder names; 6+ leading characters suffice)"
    )
    src = p.add_mutually_exclusive_group()
    src.add_argument("--text", help="the letter itself")
    src.add_argument("--file", type=Path, help="a UTF-8 text file holding the letter")
    p.add_argument("--json", action="store_true", help="print JSON: one object per classifier (label, probability, scores, latency_ms)")
    p.add_argument(
        "--convert-pickles",
        action="store_true",
        help="first rewrite the chosen classifiers that ClinBench 0.2 or earlier stored as pickles (which can run any code when "
        "loaded) in a format that cannot; give it only for a cache no one else can write to",
    )

    p = sub.add_parser(
        "score",
        help="external validation: a stored classifier's scores on another labelled file",
        description="Score a stored classifier on another file of labelled letters (external validation; nothing is retrained). "
        "The file is checked like any dataset; labels the classifier never saw are refused. Prints macro-F1 with its "
        "bootstrap 95% CI (the evaluation's n_boot and seed), accuracy, per-class scores and the baseline of always answering "
        "the majority label of its training letters. A file sharing letters with those the classifier was trained on (same text "
        "after normalising case, whitespace and punctuation) is refused, naming the rows, unless --allow-overlap. A multi-label classifier takes a file with several labels per letter "
        "(a JSON list, or --label-sep) and prints micro-, macro- and samples-F1 with CIs and the per-label table.",
    )
    p.add_argument("result", metavar="RESULT", help="evaluation key (6+ leading characters suffice) or artifact folder")
    _data_args(p)
    p.add_argument(
        "--allow-overlap",
        action="store_true",
        help="score a file that shares letters with the classifier's training letters (refused without it: their figures are "
        "near-training figures); every letter is scored and the figures on the unseen letters alone are printed as well",
    )
    p.add_argument(
        "--json",
        type=Path,
        dest="json_out",
        help="write the result here (result, model, method, data, n_letters, classes, metrics, n_overlap, overlap_rows: 0-based "
        "data rows the classifier was trained on, unseen: the figures without them)",
    )

    p = sub.add_parser(
        "rerun",
        help="run a stored evaluation again in a fresh cache and say whether it replicates",
        description="Run a stored evaluation again from its manifest (same letters, model, method and options) in a fresh "
        "temporary cache, so nothing is reused, and compare macro-F1 and the predictions (labels, and scores to 1e-6). Prints "
        "'identical' or what differs, with the package and machine changes since; exit status 0 when identical, 1 when not "
        "or when the letters file is gone or changed.",
    )
    p.add_argument("result", metavar="RESULT", help="evaluation key (6+ leading characters suffice) or artifact folder")
    p.add_argument(
        "--json", type=Path, dest="json_out", help="write the comparison here (identical, macro_f1, n_predictions_differing, environment)"
    )

    p = sub.add_parser(
        "cache", help="cache size per dataset/model/run, and pruning", description="The cache folder's size, and pruning it."
    )
    csub = p.add_subparsers(dest="cache_command", metavar="ACTION")
    u = csub.add_parser("usage", help="bytes per folder, dataset, model or run", description="Bytes in the cache, grouped.")
    u.add_argument("--by", choices=("folder", "dataset", "model", "run"), default="folder", help="grouping (default: folder)")
    u.add_argument("--json", action="store_true", help="print JSON: total_bytes, unreferenced_bytes, by.{folder,dataset,model,run}")
    pr = csub.add_parser(
        "prune",
        help="remove leftovers, old unused results, or runs with their own artifacts",
        description="Remove files from the cache; nothing a run in the store refers to (its evaluations, their embeddings and "
        "maps, its letters file) is ever removed, nor anything a queued or running step may need. Selectors add up.",
    )
    pr.add_argument(
        "--orphans",
        action="store_true",
        help="leftovers of interrupted writes, .corrupt-* folders, checkpoints (when no step is queued or running), logs of "
        "deleted runs, embeddings and maps no stored evaluation uses. Evaluation folders no run refers to are kept (`evaluate` "
        "makes them): use --older-than for those",
    )
    pr.add_argument(
        "--older-than", type=float, metavar="DAYS", help="results, embeddings, maps and checkpoints unused for DAYS that no run refers to"
    )
    pr.add_argument("--run", type=int, nargs="+", metavar="ID", help="delete these finished runs and the artifacts only they used")
    pr.add_argument("--dry-run", action="store_true", help="list what would be removed; remove nothing")
    pr.add_argument("--json", action="store_true", help="print JSON: removed [{kind, name, path, bytes, why}], freed_bytes, runs_deleted")

    p = sub.add_parser(
        "serve",
        help="classify letters over HTTP with the stored classifiers (FastAPI; loopback by default)",
        description="Serve the stored classifiers over HTTP: GET /health, GET /classifiers, POST /classify, POST /classify/batch, "
        "GET /openapi.json. Letters are classified in memory and never stored or logged. Listening on anything but loopback "
        "needs --token; docs/serving.md has curl examples.",
    )
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1; others need --token)")
    p.add_argument("--port", type=int, default=8000, help="port (default: 8000)")
    p.add_argument(
        "--token",
        help="require 'Authorization: Bearer TOKEN' on every path but /health; visible to other users in `ps`: prefer "
        "$CLINBENCH_SERVE_TOKEN or --token-file",
    )
    p.add_argument("--token-file", type=Path, metavar="FILE", help="read the token from this file (instead of --token)")
    p.add_argument(
        "--allowed-host",
        action="append",
        metavar="NAME",
        help="a Host header name to answer besides loopback's and --host (repeatable; e.g. the name a reverse proxy forwards); "
        "other names get 400",
    )
    p.add_argument("--max-bytes", type=int, default=1_000_000, help="refuse request bodies larger than this with 413 (default: 1000000)")
    p.add_argument(
        "--timeout",
        type=float,
        default=60.0,
        help="answer 503 to a request not done after this many seconds, waiting included (default: 60)",
    )
    p.add_argument(
        "--max-batch-chars", type=int, default=200_000, help="refuse batches of more characters than this with 413 (default: 200000)"
    )
    flags.add_fields(p, serving.FIELDS, "process options", serving.ServeOptions.__doc__ or "")

    p = sub.add_parser(
        "worker",
        help="serve queued runs in this terminal (workers otherwise start on demand)",
        description="Execute queued steps, each in a child process, until stopped with Ctrl-C. Workers start by themselves when runs "
        "are queued; at most $CLINBENCH_WORKERS (default 1) serve at once.",
    )
    p.add_argument("--idle-exit", type=float, default=0.0, metavar="SECONDS", help="leave after this long with nothing queued (0 = never)")
    p.add_argument(
        "--executor",
        choices=("local", "ray"),
        default="local",
        help="local: execute local runs' steps here, one at a time; ray: send Ray runs' steps to a Ray cluster (default: local)",
    )
    p.add_argument(
        "--ray-address", help="with --executor ray: the cluster (default: the run's ray_address, $RAY_ADDRESS, or a local instance)"
    )
    p.add_argument("--step", help=argparse.SUPPRESS)  # internal: RUN:IDX, a step started as a fresh process (engine.runs.stephost)
    return parser


def cmd_worker(args) -> int:
    from engine.runs import stephost, worker

    if args.step:
        try:
            run_id, idx = (int(x) for x in args.step.split(":"))
        except ValueError:
            raise ClinBenchError(f"--step expects RUN:IDX (two whole numbers), not {args.step!r}.") from None
        return stephost.execute_child(run_id, idx)
    if args.idle_exit < 0:
        raise ClinBenchError("--idle-exit must be 0 (never) or a number of seconds.")
    if args.executor == "ray":
        from engine.runs import ray_driver

        return ray_driver.serve(idle_exit=args.idle_exit, address=args.ray_address)
    return worker.serve(idle_exit=args.idle_exit)


def cmd_serve(args) -> int:
    from engine.serving import server  # FastAPI is imported only when serving

    return server.cmd_serve(args)


COMMANDS = {
    "models": out.cmd_models,
    "methods": out.cmd_methods,
    "data": out.cmd_data,
    "embed": out.cmd_embed,
    "evaluate": out.cmd_evaluate,
    "submit": out.cmd_submit,
    "run": out.cmd_run,
    "runs": out.cmd_runs,
    "predict": out.cmd_predict,
    "score": out.cmd_score,
    "rerun": out.cmd_rerun,
    "cache": out.cmd_cache,
    "worker": cmd_worker,
    "serve": cmd_serve,
}


def _quiet_transformers() -> None:
    """transformers' own log lines and progress bars off (the CLI draws its own)."""
    try:
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()
    except ImportError:
        pass


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not args.command:
        parser.print_help()
        return 2
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    warnings.filterwarnings("ignore", category=FutureWarning, module="transformers")  # deprecation notes meant for developers
    logging.getLogger("transformers").setLevel(logging.ERROR)
    try:
        out.precheck(args)  # a hub id that cannot be had: refused before transformers and torch are imported
        _quiet_transformers()
        return COMMANDS[args.command](args)
    except ClinBenchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except sqlite3.Error as exc:
        print(
            f"error: the run store in the cache folder could not be used ({exc}). If another program holds it, retry; if the disk is full, free space.",
            file=sys.stderr,
        )
        return 2
    except KeyboardInterrupt:
        print("interrupted; nothing half-written was kept.", file=sys.stderr)
        return 130
