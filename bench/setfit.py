"""SetFit on MiniLM against the frozen MiniLM + SVC, on the bundled default letters (600, 5 specialties).

    python bench/setfit.py [--protocol holdout|cv] [--shots 8] [--json PATH]

Runs, one after the other in a fresh cache (so nothing is a cache hit and every second is counted):

* setfit, labels_per_class = --shots (8): the few-shot point of the learning curve;
* setfit on every training letter (labels_per_class none; the pairs are capped by setfit_pairs);
* svc on frozen MiniLM embeddings (the default comparison's method), on the same protocol and seed.

Prints macro-F1 with its 95% CI, the majority baseline, and the seconds each step took (wall clock, model
loading and embedding included); --json writes the same rows. holdout (the default, and what `auto` picks for
600 letters) trains one encoder per setfit row; cv trains folds + 1.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OPTIONS_SHOWN = ("setfit_pairs", "setfit_epochs", "setfit_max_length", "labels_per_class", "max_length", "batch_size", "learning_rate")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--protocol", default="holdout", choices=("holdout", "cv"))
    ap.add_argument("--shots", type=int, default=8, help="labels_per_class of the few-shot row")
    ap.add_argument("--pairs", type=int, default=None, help="setfit_pairs (default: the option's default)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--rows", default="shots,all,svc", help="which rows, comma-separated (shots, all, svc)")
    args = ap.parse_args()
    sys.path.insert(0, str(ROOT))
    from bench._machine import fresh_cache

    with fresh_cache("setfit"):
        run(args)


def run(args) -> None:
    sys.path.insert(0, str(ROOT))
    from engine.data.dataset import default_dataset
    from engine.options.groups import Options
    from engine.runs import experiment

    ds = default_dataset()
    common = {"protocol": args.protocol, "seed": args.seed, **({"setfit_pairs": args.pairs} if args.pairs else {})}
    configs = [
        (f"setfit · {args.shots} per label", "setfit", {"labels_per_class": args.shots}),
        ("setfit · all letters", "setfit", {}),
        ("svc · frozen MiniLM", "svc", {}),
    ]
    wanted = args.rows.split(",")
    configs = [c for c, name in zip(configs, ("shots", "all", "svc"), strict=True) if name in wanted]
    rows = []
    for label, method, extra in configs:
        opts = Options.parse({**common, **extra})
        spec = experiment.Spec("bench-setfit", experiment.DataSpec(), ["minilm"], [method], opts)
        t0 = time.perf_counter()
        res = experiment.execute(spec, spec.steps(reference=False)[0], dataset=ds)
        seconds = time.perf_counter() - t0
        m, man = res.metrics, res.manifest
        training = man.get("training", {})
        rows.append(
            {
                "row": label,
                "method": method,
                "protocol": m["protocol"],
                "n_scored": m["n_scored"],
                "macro_f1": m["macro_f1"],
                "macro_f1_ci": m["macro_f1_ci"],
                "accuracy": m["accuracy"],
                "baseline_macro_f1": m["baseline"]["macro_f1"],
                "seconds": seconds,
                "train_s": man.get("timings", {}).get("train_s"),
                "n_shots": training.get("n_shots"),
                "n_pairs": training.get("n_pairs"),
                "options": {k: man["config"].get(k) for k in OPTIONS_SHOWN},
            }
        )
        r = rows[-1]
        lo, hi = r["macro_f1_ci"]
        print(f"{label:28s} macro-F1 {r['macro_f1']:.3f} [{lo:.3f}, {hi:.3f}]  acc {r['accuracy']:.3f}  {seconds:7.1f} s", flush=True)
    print()
    print(f"{'row':28s} {'macro-F1':>8s} {'95% CI':>15s} {'baseline':>8s} {'shots':>6s} {'pairs':>6s} {'seconds':>8s}")
    for r in rows:
        ci = f"[{r['macro_f1_ci'][0]:.3f}, {r['macro_f1_ci'][1]:.3f}]"
        shots = "" if r["n_shots"] is None else str(r["n_shots"])
        pairs = "" if r["n_pairs"] is None else str(r["n_pairs"])
        print(f"{r['row']:28s} {r['macro_f1']:8.3f} {ci:>15s} {r['baseline_macro_f1']:8.3f} {shots:>6s} {pairs:>6s} {r['seconds']:8.1f}")
    if args.json:
        args.json.write_text(json.dumps({"dataset": ds.source, "n_letters": len(ds), "protocol": args.protocol, "rows": rows}, indent=2))
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
