"""The bodies of `python -m engine` commands: call engine.api, print what a person reads (or JSON).

Each `cmd_*` takes the parsed arguments and returns the exit status; engine.cli builds the parser
and maps errors to `error: ...` lines and status 2.
"""

from __future__ import annotations

import json
import statistics
import sys
import time

from engine.cli.terminal import print_metrics, progress_bars
from engine.evaluation import headline
from engine.options import flags


def _api():
    from engine import api  # imported when a command runs, so `--help` does not load torch

    return api


def precheck(args) -> None:
    """Refuse, before the engine's heavy modules load, a hub id the command would need but cannot have (not in the local
    cache, hub unreachable): `evaluate` and `embed` (--model), `submit` and `run` (the spec's models)."""
    if args.command in ("evaluate", "embed"):
        names = [args.model]
    elif args.command in ("submit", "run"):
        raw = _api().read_spec(args.spec)
        names = raw.get("models") if isinstance(raw, dict) else None
        names = [n for n in names if isinstance(n, str)] if isinstance(names, list) else []
    else:
        return
    _api().check_hub_models(names)


def cmd_models(args) -> int:
    api = _api()
    if args.prepare:  # scripts/setup.sh: the bundled models' files made ready in the cache (SmolLM2's GGUF converted once)
        from engine.models import catalog

        print("\n".join(f"{n}: ready in {catalog.locate(catalog.resolve(n))[0]}" for n in api.bundled_models()))
        return 0
    rows = api.model_rows()
    if args.json:
        print(json.dumps({"placement": api.placement(), "models": rows}, indent=2))
        return 0
    print(f"Device: {api.device()}\n")
    print(f"{'name':13s} {'source':8s} {'kind':8s} {'params':>8s}  {'offline':7s}  reason")
    for r in rows:
        params = f"{r['params'] / 1e6:.0f}M" if r["params"] else "?"
        print(f"{r['name']:13s} {r['source']:8s} {r['kind'] or '?':8s} {params:>8s}  {'yes' if r['offline'] else 'no':7s}  {r['reason']}")
    print("\nAlso accepted: any hub id ('org/name') or local model folder.")
    return 0


def cmd_methods(args) -> int:
    rows = _api().methods()
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    print(f"{'method':14s} {'stage':7s} what it does")
    for r in rows:
        print(f"{r['name']:14s} {r['stage']:7s} {r['title']}")
    print("\nOptions: `python -m engine evaluate --help` lists them, grouped by concern.")
    return 0


def cmd_data(args) -> int:
    api = _api()
    if args.data_command != "validate":
        print("usage: python -m engine data validate PATH [--text-column C] [--label-column C]", file=sys.stderr)
        return 2
    report = api.validate_file(args.path, args.text_column, args.label_column, label_sep=args.label_sep, **data_options(args))
    if args.json:
        print(json.dumps(report.to_dict(), indent=2))
    else:
        if report.columns:  # (a file that could not be read has no rows or labels to count)
            print(f"{report.path}: {report.n_rows} rows, {len(report.class_counts)} labels{' (multi-label)' if report.multi_label else ''}")
        for line in report.label_lines():  # letters per label; multi-label: no label, labels per letter, co-occurrence
            print(line)
        for issue in report.issues:
            print(f"{issue.level.upper()}: {issue.message}")
        print("OK: usable." if report.ok else f"NOT USABLE: {len(report.errors)} error(s) to fix.")
    return 0 if report.ok else 1


def data_options(args) -> dict:
    """The data flags (engine.cli.parser._data_args) as engine.data.dataset.load_dataset's keywords (engine.data.dataset.DATA_OPTIONS)."""
    from engine.data.dataset import DATA_OPTIONS

    return {k: getattr(args, k, None) for k in DATA_OPTIONS}


def _load(args):
    return _api().load_dataset(args.data, args.text_column, args.label_column, label_sep=args.label_sep, **data_options(args))


def cmd_embed(args) -> int:
    api = _api()
    ds = _load(args)
    e = flags.from_args(args).embedding
    vectors, stats = api.embed(
        args.model,
        ds.texts,
        pooling=e.pooling,
        max_length=e.max_length,
        windows=e.windows,
        use_cache=not args.no_cache,
        ctx=progress_bars(),
    )
    if args.out:
        api.save_npy(args.out, vectors)
    src = "cache" if stats.cache_hit else f"{stats.tokens_per_s:,.0f} tokens/s on {stats.device} ({stats.dtype})"
    read = f"{stats.max_length} tokens" if stats.windows == 1 else f"{stats.windows} windows of {stats.max_length} tokens"
    print(f"{stats.n_letters} letters -> {stats.dim}-d vectors ({src}); {stats.n_truncated} letter(s) cut to {read}")
    print(f"key {stats.key}" + (f"; saved to {args.out}" if args.out else ""))
    return 0


def cmd_evaluate(args) -> int:
    api = _api()
    ds = _load(args)
    opts = flags.from_args(args)
    spec = api.parse_spec({"models": [args.model], "methods": [args.method], "options": opts.to_dict()}, where="--method")
    results = []
    for step in spec.steps(reference=False):  # (--model tfidf runs its one method; --n-seeds: one per seed; --learning-curve)
        res = api.run_in_process(spec, step, dataset=ds, ctx=progress_bars())
        results.append((step, res))
        _print_result(step["title"] + (" (cached)" if res.cache_hit else ""), res)
    sized = [(step, r) for step, r in results if "labels_per_class" in step]
    full = [r for step, r in results if "labels_per_class" not in step]  # the run's own size, one per seed
    first, m = full[0], full[0].metrics
    out = {"model": args.model, "method": first.method, "artifact": first.artifact, **m}
    if len(full) > 1 and "macro_f1" in m:
        f1 = [r.metrics["macro_f1"] for r in full]
        seeds = [r.manifest["config"]["seed"] for r in full]
        sd = statistics.stdev(f1)
        print(
            f"\nacross {len(f1)} seeds ({seeds[0]}-{seeds[-1]}): macro-F1 {statistics.mean(f1):.3f} ± {sd:.3f} "
            f"(min {min(f1):.3f}, max {max(f1):.3f}); the first seed's 95% CI is {m['macro_f1_ci'][0]:.3f}-{m['macro_f1_ci'][1]:.3f}"
        )
        out.update(
            seeds=[
                {"seed": s, "macro_f1": r.metrics["macro_f1"], "macro_f1_ci": r.metrics["macro_f1_ci"], "artifact": r.artifact}
                for s, r in zip(seeds, full, strict=True)
            ],
            seed_macro_f1_mean=statistics.mean(f1),
            seed_macro_f1_sd=sd,
        )
    if sized and "macro_f1" in m:
        curve = [(step["labels_per_class"], r) for step, r in sized] + [(opts.protocol.labels_per_class, r) for r in full]
        print("\nlearning curve (letters per label: macro-F1, 95% CI)")
        for n, r in curve:
            lo, hi = r.metrics["macro_f1_ci"]
            print(f"  {n or 'all':>5}: {r.metrics['macro_f1']:.3f}  {lo:.3f}-{hi:.3f}")
        out["learning_curve"] = [
            {
                "labels_per_class": n,
                "seed": r.manifest["config"]["seed"],
                "macro_f1": r.metrics["macro_f1"],
                "macro_f1_ci": r.metrics["macro_f1_ci"],
                "artifact": r.artifact,
            }
            for n, r in curve
        ]
    if args.json_out:
        api.write_json(args.json_out, out)
    return 0


def _print_result(title: str, res) -> None:
    m, plan = res.metrics, res.manifest.get("protocol") or {}
    if "macro_f1" in m:
        print_metrics(title, m, plan.get("reason"))
        for warning in plan.get("warnings") or []:
            print(f"  WARNING: {warning}")
    else:
        print(
            f"\n{title}\n  perplexity on the test letters: {m['perplexity_before']:.2f} before, {m['perplexity_after']:.2f} after"
            f"\n  adapted model (usable with --model): {m['adapted_model']}"
        )
    if tr := res.manifest.get("training"):
        print(
            f"  training: best epoch {tr['best_epoch']} of {tr['epochs_run']} run" + (" (stopped early)" if tr.get("stopped_early") else "")
        )
    adaptation = ((res.manifest.get("adaptation") or {}).get("training") or {}).get("training")
    if targets := (tr or adaptation or {}).get("target_modules"):
        t = tr or adaptation
        layers = f" ({t['lora_layers']} layers)" if t.get("lora_layers") else ""
        full = t.get("modules_to_save") or t.get("head_modules")
        print(f"  LoRA adapted {', '.join(targets)}{layers}" + (f"; trained in full beside it: {', '.join(full)}" if full else ""))
    print(f"\nartifact: {res.artifact}")


def _when(t: float | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M", time.localtime(t)) if t else ""


def _step_line(s) -> str:
    return f"  [{s.index + 1}] {s.status:11s} {s.title:52s} {_api().fmt_duration(s.seconds):>10s}  {s.detail}"


def _spec_of(args):
    """The spec file, with the execution flags given on the command line (--executor ray, ...) over its options."""
    spec = _api().load_spec(args.spec)
    spec.options = flags.from_args(args, base=spec.options)
    return spec


def cmd_submit(args) -> int:
    api = _api()
    spec = _spec_of(args)
    run_id = api.submit(spec, start_worker=not args.no_worker)
    print(f"queued run {run_id} '{spec.name}': {len(spec.steps())} step(s). Follow it with `python -m engine runs show {run_id}`.")
    print(run_id)
    return 0


def _follow(run_id: int):
    """Poll a run until it ends, drawing a progress bar for the running step and a line per finished step."""
    api = _api()
    reported: set[int] = set()
    bars: dict[int, object] = {}
    last_check = time.monotonic()
    while True:
        run = api.get_run(run_id)
        for s in run.steps:
            if s.status == api.Status.RUNNING:
                bars.setdefault(s.index, progress_bars())
                p = s.progress
                if p["total"]:
                    bars[s.index].progress(p["done"], p["total"], p["stage"])
            elif s.status.final and s.index not in reported:
                reported.add(s.index)
                print(_step_line(s), flush=True)
        if run.status.final:
            return run
        if run.status == api.Status.QUEUED and time.monotonic() - last_check > 5:
            api.ensure_worker()  # e.g. the worker left or was killed before taking this run
            last_check = time.monotonic()
        time.sleep(0.5)


def _print_results_table(run) -> None:
    scored = [s.result for s in run.steps if s.status == "done" and s.result and "macro_f1" in s.result]
    name = headline.of(scored[0])[0] if scored else "macro-F1"  # the task's headline (one dataset per run)
    print(f"\n{'model':14s} {'method':12s} {'variant':14s} {name:>8s}  {'95% CI':13s}  note")
    for s in run.steps:
        r, variant = s.result, " · ".join(s.title.split(" · ")[2:])[:14]  # seed, training size (title: model · method · ...)
        head = f"{s.model[:14]:14s} {s.method:12s} {variant:14s}"
        if s.status == "done" and r and "macro_f1" in r:
            _, value, (lo, hi) = headline.of(r)
            print(f"{head} {value:8.3f}  {lo:.3f}-{hi:.3f}    {'cached' if r.get('cache_hit') else ''}")
        elif s.status == "done" and r:
            print(f"{head} {'-':>8s}  {'':13s}  {s.detail}")
        else:
            print(f"{head} {'-':>8s}  {'':13s}  {s.status.upper()}: {s.error or ''}")


def cmd_run(args) -> int:
    api = _api()
    spec = _spec_of(args)
    run_id = api.submit(spec)
    print(
        f"run {run_id} '{spec.name}': {len(spec.steps())} step(s) on {spec.data.path}; following it (Ctrl-C stops following, the run goes on)",
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
    print(f"\nrun {run_id}: {run.status}" + ("" if run.status == "done" else f". Log: python -m engine runs logs {run_id}"))
    if args.json_out:
        rows = [
            {"model": s.model, "method": s.method, "status": str(s.status), **({"error": s.error} if s.error else {}), **(s.result or {})}
            for s in run.steps
        ]
        api.write_json(args.json_out, rows)
    return 0 if run.status == "done" else 1


def _wake(api) -> None:
    """Listing runs starts a worker for steps queued with none running (killed, or gone before taking them), and says so
    on stderr (stdout stays the listing, or its JSON)."""
    for line in api.wake_workers():
        print(line, file=sys.stderr, flush=True)


def cmd_runs(args) -> int:
    api = _api()
    action = args.runs_command
    if action is None:
        runs = api.list_runs()
        _wake(api)
        if args.json:
            print(json.dumps([r.to_dict() for r in runs], indent=2))
        elif not runs:
            print("No runs yet. Queue one with `python -m engine submit SPEC` or `python -m engine run SPEC`.")
        else:
            print(f"{'id':>4s}  {'status':11s} {'steps':>7s}  {'created':16s}  name")
            for r in runs:
                c = r.counts
                extra = ", ".join(f"{c[k]} {k}" for k in ("failed", "cancelled", "interrupted") if c[k])
                print(
                    f"{r.id:4d}  {r.status:11s} {c['done']:>3d}/{len(r.steps):<3d}  {_when(r.created):16s}  {r.name}"
                    + (f"  ({extra})" if extra else "")
                )
        return 0
    if action == "show":
        run = api.get_run(args.run_id)
        _wake(api)
        if args.json:
            print(json.dumps(run.to_dict(), indent=2))
            return 0
        print(
            f"run {run.id} '{run.name}': {run.status}" + (" (cancel requested)" if run.cancel_requested and run.status == "running" else "")
        )
        print(f"  created {_when(run.created)}" + (f", worker pid {run.worker_pid}" if run.worker_pid else ""))
        for s in run.steps:
            print(_step_line(s) + (f"  [{s.result['artifact'].rsplit('/', 1)[-1][:10]}]" if s.result and s.result.get("artifact") else ""))
        print(f"  log: python -m engine runs logs {run.id}")
        return 0
    if action == "cancel":
        run = api.cancel_run(args.run_id)
        print(
            f"run {run.id} is {run.status}; nothing left to cancel."
            if run.status.final
            else f"run {run.id}: cancel requested; queued steps are cancelled and the running step stops within seconds."
        )
        return 0
    if action == "resume":
        run = api.resume_run(args.run_id)
        queued = [s for s in run.steps if s.status == "queued"]
        print(
            f"run {run.id}: {len(queued)} step(s) queued again; {run.counts['done']} finished step(s) kept."
            if queued
            else f"run {run.id} is {run.status}; nothing to resume."
        )
        return 0
    if action == "logs":
        print(api.run_log(args.run_id), end="")
        return 0
    api.delete_run(args.run_id)
    print(f"run {args.run_id} deleted (cached embeddings and evaluations are kept).")
    return 0


def cmd_predict(args) -> int:
    api = _api()
    if args.text is not None:
        text = args.text
    elif args.file is not None:
        try:
            text = args.file.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise api.ClinBenchError(f"{args.file} cannot be read as UTF-8 text ({exc}). Save the letter as UTF-8 plain text.") from None
    else:
        try:
            text = sys.stdin.buffer.read().decode("utf-8")
        except UnicodeDecodeError as exc:
            raise api.ClinBenchError(f"The letter on standard input is not UTF-8 text (byte {exc.start}). Send it as UTF-8.") from None
    text = api.check_letter(text)  # before anything is loaded or converted
    evals = api.evaluations(run_id=args.run)[0] if args.run is not None else api.find_evaluations(args.evaluation)
    if not evals:
        raise api.ClinBenchError(f"Run {args.run} has no stored classifier yet (no finished classifying step).")
    if args.convert_pickles and (converted := api.convert_pickles(evals)):
        print(
            f"converted {len(converted)} classifier(s) stored as pickles to classifier.skops: {', '.join(k[:10] for k in converted)}",
            file=sys.stderr,
        )
    rows = api.classify(text, evals)
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0 if all(r["predicted"] for r in rows) else 1
    print(f"{'classifier':44s} {'label':28s} {'probability':>11s} {'ms':>7s}")
    for r in rows:
        if r["predicted"]:
            print(
                f"{r['evaluation'][:44]:44s} {r['predicted'][:28]:28s} {r['score']:11.3f} {r['latency_ms']:7.0f}"
                + ("  (letter cut)" if r["truncated"] else "")
            )
        else:
            print(f"{r['evaluation'][:44]:44s} error: {r['error']}")
    agree = api.agreement(rows)
    if agree["label"]:
        print(f"\nmajority: {agree['label']} ({agree['share']:.0%} of {agree['n']} classifiers)")
    return 0 if all(r["predicted"] for r in rows) else 1


def cmd_score(args) -> int:
    api = _api()
    res = api.score_external(
        args.result,
        args.data,
        args.text_column,
        args.label_column,
        label_sep=args.label_sep,
        allow_overlap=args.allow_overlap,
        sheet=args.sheet,
    )
    print_metrics(f"{res['evaluation']} on {args.data} ({res['n_letters']} letters)", res)
    if res.get("stored_macro_f1") is not None:
        print(f"  in its stored evaluation (its own letters): macro-F1 {res['stored_macro_f1']:.3f}")
    if not res["overlap_checked"]:
        print("  its training letters were not recorded (stored before ClinBench recorded them): the overlap cannot be checked")
    elif res["n_overlap"]:
        rows = ", ".join(str(r + 1) for r in res["overlap_rows"][:10]) + (" ..." if res["n_overlap"] > 10 else "")
        print(f"  {res['n_overlap']} of these letters were training letters (rows {rows}); the figures above count them")
        if res["unseen"]:
            print_metrics(f"{res['evaluation']} on the {res['unseen']['n_letters']} unseen letters of {args.data}", res["unseen"])
        else:
            print("  every letter of the file was a training letter: no unseen letter to score")
    if args.json_out:
        api.write_json(args.json_out, res)
    return 0


def cmd_rerun(args) -> int:
    api = _api()
    (ev,) = api.find_evaluations([args.result])
    print(
        f"re-running {ev.label} [{ev.key[:10]}] in a fresh cache (nothing reused: as long as the first time)...",
        file=sys.stderr,
        flush=True,
    )
    res = api.rerun(ev.key, echo=True)
    f1 = res["macro_f1"]
    if res["problem"]:
        print(f"{res['evaluation']}: not re-run. {res['problem']}")
    elif res["identical"]:
        print(f"{res['evaluation']}: identical (macro-F1 {f1['rerun']:.4f}, every prediction and score the same)")
    else:
        print(f"{res['evaluation']}: differs")
        for line in res["differences"]:
            print(f"  - {line}")
        changed = res["environment"]["changed"]
        print("  since it was stored: " + ("; ".join(f"{k} {a} -> {b}" for k, (a, b) in changed.items()) or "no recorded version changed"))
    if args.json_out:
        api.write_json(args.json_out, res)
    return 0 if res["identical"] else 1


def cmd_cache(args) -> int:
    from engine.runs.housekeeping import report  # (text only; the work goes through the front door)

    if args.cache_command == "usage":
        res = _api().cache_usage()
    elif args.cache_command == "prune":
        res = _api().prune_cache(older_than_days=args.older_than, runs=args.run or (), orphans=args.orphans, dry_run=args.dry_run)
    else:
        print("usage: python -m engine cache {usage,prune} ... (see --help)", file=sys.stderr)
        return 2
    print(json.dumps(res, indent=2) if args.json else report(res, getattr(args, "by", "folder")))
    return 0
