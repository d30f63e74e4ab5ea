"""Instruction tuning (instruct-lora) of SmolLM2 against its zero-shot base, on the bundled default letters (600, 5 specialties).

    python bench/instruct.py [--model smollm2] [--protocol holdout|cv] [--rows instruct,zero-shot] [--set OPTION=VALUE ...] --json PATH

Runs, one after the other in a fresh cache (nothing is a cache hit; model conversion and loading are counted):

* instruct-lora as `python -m engine evaluate --method instruct-lora` runs it (the shipped defaults unless --set):
  LoRA trained on the training split's prompt -> label-word sequences (validation carve for the epoch), then the
  test letters scored by label likelihood with the adapter merged;
* zero-shot with the same prompt options on the same split: the base model the tuning starts from.

Prints and writes (--json) per row: macro-F1 with its 95% bootstrap CI, accuracy, the majority baseline, the wall
seconds of the step, training seconds, scoring seconds per test letter, the validation curve (macro-F1 per epoch)
and the options that shape the cost. The machine may be shared: seconds are wall clock, the load average is reported.
Nothing is chosen on the test letters here: the defaults were set before, on the validation letters' curve.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OPTIONS_SHOWN = ("max_length", "epochs", "learning_rate", "batch_size", "lora_r", "scoring", "calibration", "seed")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2")
    ap.add_argument("--protocol", default="holdout", choices=("holdout", "cv"))
    ap.add_argument("--rows", default="instruct,zero-shot", help="which rows, comma-separated (instruct, zero-shot)")
    ap.add_argument("--set", action="append", default=[], metavar="OPTION=VALUE", help="an option for both rows, e.g. max_length=256")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    sys.path.insert(0, str(ROOT))
    from bench._machine import fresh_cache

    with fresh_cache("instruct"):
        run(args)


def _value(text: str):
    """An option's value from the command line: JSON (256, 0.5, true, null) or else the text itself."""
    try:
        return json.loads(text)
    except ValueError:
        return text


def run(args) -> None:
    sys.path.insert(0, str(ROOT))
    from bench._machine import progress_context
    from engine.data.dataset import default_dataset
    from engine.options.groups import Options
    from engine.runs import experiment

    ds = default_dataset()
    given = {name: _value(text) for name, text in (s.split("=", 1) for s in args.set)}
    methods = {"instruct": "instruct-lora", "zero-shot": "zero-shot"}
    rows = []
    for name in args.rows.split(","):
        method = methods[name]
        opts = Options.parse({"protocol": args.protocol, **given})
        spec = experiment.Spec("bench-instruct", experiment.DataSpec(), [args.model], [method], opts)
        t0 = time.perf_counter()
        res = experiment.execute(spec, spec.steps(reference=False)[0], dataset=ds, ctx=progress_context(t0))
        seconds = time.perf_counter() - t0
        m, man = res.metrics, res.manifest
        timings, training = man.get("timings", {}), man.get("training", {})
        rows.append(
            {
                "row": f"{method} · {args.model}",
                "method": method,
                "protocol": m["protocol"],
                "n_scored": m["n_scored"],
                "macro_f1": m["macro_f1"],
                "macro_f1_ci": m["macro_f1_ci"],
                "accuracy": m["accuracy"],
                "baseline_macro_f1": m["baseline"]["macro_f1"],
                "seconds": seconds,
                "train_s": timings.get("train_s"),
                "score_s": timings.get("score_s"),
                "s_per_letter": timings.get("s_per_letter"),
                "val_macro_f1": [c.get("val_macro_f1") for c in training.get("curve", [])],
                "best_epoch": training.get("best_epoch"),
                "n_fit": training.get("n_fit"),
                "n_val": training.get("n_val"),
                "n_truncated": training.get("n_truncated"),
                "options": {k: man["config"].get(k) for k in OPTIONS_SHOWN}
                | {"epochs": man.get("config", {}).get("train", {}).get("epochs")},
                "load_avg": os.getloadavg(),
            }
        )
        r = rows[-1]
        lo, hi = r["macro_f1_ci"]
        print(f"{r['row']:28s} macro-F1 {r['macro_f1']:.3f} [{lo:.3f}, {hi:.3f}]  acc {r['accuracy']:.3f}  {seconds:7.1f} s", flush=True)
    print()
    print(f"{'row':28s} {'macro-F1':>8s} {'95% CI':>15s} {'baseline':>8s} {'train s':>8s} {'s/letter':>8s} {'seconds':>8s}  val macro-F1")
    for r in rows:
        ci = f"[{r['macro_f1_ci'][0]:.3f}, {r['macro_f1_ci'][1]:.3f}]"
        train = "" if r["train_s"] is None else f"{r['train_s']:.0f}"
        spl = "" if r["s_per_letter"] is None else f"{r['s_per_letter']:.2f}"
        curve = " ".join(f"{v:.3f}" for v in r["val_macro_f1"])
        print(
            f"{r['row']:28s} {r['macro_f1']:8.3f} {ci:>15s} {r['baseline_macro_f1']:8.3f} {train:>8s} {spl:>8s} {r['seconds']:8.1f}  {curve}"
        )
    if args.json:
        out = {
            "dataset": ds.source,
            "n_letters": len(ds),
            "model": args.model,
            "protocol": args.protocol,
            "options_set": given,
            "rows": rows,
        }
        args.json.write_text(json.dumps(out, indent=2))
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
