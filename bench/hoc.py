"""Multi-label: the Hallmarks of Cancer corpus (1,852 abstracts, 10 hallmarks, 0-5 per abstract) with the bundled models.

    python bench/hoc.py [--data PATH] [--protocol cv|holdout] [--folds 5] [--test-size 0.2] [--rows tfidf,minilm-svc,...] [--json PATH]

Every row is a step as `python -m engine evaluate --label-column labels` runs it (JSONL list labels; the 272 abstracts
with no hallmark are kept as "no label" outcomes), on one plan: iteratively stratified K-fold cross-validation, 1 repeat,
seed 0, exact duplicates grouped (or, --protocol holdout, one iteratively stratified hold-out split: what the rows that
train a model per fold can afford on a CPU). Rows: tfidf, minilm-svc, minilm-logreg, smollm2-svc, minilm-lora (LoRA with
a BCE head), minilm-adapt-svc (masked-LM adaptation on the training letters, then the SVC: examples/hoc-adaptation.yaml). Each label has its own classifier and its own decision threshold (the best F1 on
cross-validated probabilities of the training letters, never the test letters). Runs in a fresh cache, so nothing is a
cache hit and every second (model loading and embedding included) is counted.

Prints micro-F1 (the BLURB convention for this corpus), macro-F1 and samples-F1 with 95% bootstrap CIs over abstracts,
subset accuracy, Hamming loss and seconds per row; --json writes the same rows. The machine may be shared: seconds are
wall-clock, with the load average at the end of each row.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "hallmarks_of_cancer.jsonl"
ROWS = {  # row name: (model, method)
    "tfidf": ("tfidf", "tfidf"),
    "minilm-svc": ("minilm", "svc"),
    "minilm-logreg": ("minilm", "logreg"),
    "smollm2-svc": ("smollm2", "svc"),
    "minilm-lora": ("minilm", "lora"),
    "minilm-adapt-svc": ("minilm", "adapt-svc"),
}
DEFAULT_ROWS = "tfidf,minilm-svc,minilm-logreg,smollm2-svc"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=DATA, help="the HoC JSONL (text, labels)")
    ap.add_argument("--protocol", choices=("cv", "holdout"), default="cv")
    ap.add_argument("--folds", type=int, default=5, help="cv: folds")
    ap.add_argument("--test-size", type=float, default=0.2, help="holdout: the test fraction")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--rows", default=DEFAULT_ROWS, help=f"which rows, comma-separated ({', '.join(ROWS)})")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    if not args.data.exists():
        sys.exit(f"{args.data} not found: give the Hallmarks of Cancer JSONL with --data")
    sys.path.insert(0, str(ROOT))
    from bench._machine import fresh_cache

    with fresh_cache("hoc"):
        run(args)


def run(args) -> None:
    sys.path.insert(0, str(ROOT))
    from engine.data.dataset import load_dataset
    from engine.options.groups import Options
    from engine.runs import experiment

    ds = load_dataset(args.data, "text", "labels")
    n_none = sum(1 for labs in ds.labels if not labs)
    print(f"{args.data.name}: {len(ds)} abstracts, {len(ds.classes)} labels, {n_none} with no label", flush=True)
    rows = []
    for name in args.rows.split(","):
        model, method = ROWS[name]
        plan = {"cv_folds": args.folds, "cv_repeats": 1} if args.protocol == "cv" else {"test_size": args.test_size}
        opts = Options.parse({"protocol": args.protocol, **plan, "seed": args.seed})
        spec = experiment.Spec("bench-hoc", experiment.DataSpec(str(args.data), "text", "labels"), [model], [method], opts)
        t0 = time.perf_counter()
        res = experiment.execute(spec, spec.steps(reference=False)[0], dataset=ds)
        seconds = time.perf_counter() - t0
        m, man = res.metrics, res.manifest
        rows.append(
            {
                "row": name,
                "model": model,
                "method": method,
                **{k: m[k] for k in ("task", "protocol", "n_scored", "micro_f1", "micro_f1_ci", "macro_f1", "macro_f1_ci")},
                **{k: m.get(k) for k in ("samples_f1", "samples_f1_ci", "subset_accuracy", "hamming_loss", "fold_micro_f1")},
                "baseline": m["baseline"],
                "per_label": m["per_label"],
                "classifier": {k: man.get("classifier", {}).get(k) for k in ("best_params", "thresholds")},
                "embed_s": man.get("timings", {}).get("embed_s"),
                "seconds": seconds,
                "load_average": os.getloadavg()[0],
            }
        )
        r = rows[-1]
        lo, hi = r["micro_f1_ci"]
        print(f"{name:16s} micro-F1 {r['micro_f1']:.3f} [{lo:.3f}, {hi:.3f}]  macro-F1 {r['macro_f1']:.3f}  {seconds:7.1f} s", flush=True)
    print()
    print(
        f"{'row':16s} {'micro-F1':>8s} {'95% CI':>15s} {'macro-F1':>8s} {'samples-F1':>10s} {'subset acc':>10s} {'Hamming':>8s} {'seconds':>8s}"
    )
    for r in rows:
        ci = f"[{r['micro_f1_ci'][0]:.3f}, {r['micro_f1_ci'][1]:.3f}]"
        print(
            f"{r['row']:16s} {r['micro_f1']:8.3f} {ci:>15s} {r['macro_f1']:8.3f} {r['samples_f1']:10.3f} {r['subset_accuracy']:10.3f} "
            f"{r['hamming_loss']:8.3f} {r['seconds']:8.1f}"
        )
    base = rows[0]["baseline"] if rows else {}
    print(f"baseline (always {base.get('label')}): micro-F1 {base.get('micro_f1', 0):.3f}, samples-F1 {base.get('samples_f1', 0):.3f}")
    if args.json:
        out = {"dataset": args.data.name, "n_letters": len(ds), "n_no_label": n_none, "protocol": args.protocol, "folds": args.folds,
               "test_size": args.test_size, "seed": args.seed, "rows": rows}  # fmt: skip
        args.json.write_text(json.dumps(out, indent=2))
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
