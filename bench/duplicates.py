"""How much duplicate letters distort a cross-validated score, measured on MTSamples.

    python bench/duplicates.py [--quick] [--json PATH]

On ../shared/data/mtsamples.csv (the rows with a transcription; label `medical_specialty`, 40 classes)
it makes two 5-fold plans with the same seed: ClinBench's (exact duplicates kept in one group) and a
plain stratified 5-fold that ignores duplicates. For each it counts the exact-duplicate pairs split
between a training and a test fold, and scores MiniLM (mean pooling, 256 tokens) -> logistic
regression (no search, no SMOTE: the same estimator in both) by pooled out-of-fold macro-F1 over all
classes with its bootstrap CI. `--quick` uses the first 1,500 letters. Prints a table, writes JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("CLINBENCH_CACHE", tempfile.mkdtemp(prefix="clinbench-bench-"))

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from engine.data import dataset  # noqa: E402
from engine.evaluation import scoring  # noqa: E402
from engine.features import extract  # noqa: E402
from engine.methods import estimators  # noqa: E402
from engine.options.groups import ClassifierOptions, ProtocolOptions  # noqa: E402
from engine.protocols import plans  # noqa: E402

MTSAMPLES = ROOT.parent / "shared" / "data" / "mtsamples.csv"


def straddling_pairs(groups: np.ndarray, plan: plans.Plan) -> int:
    """Exact-duplicate pairs with one letter in a fold's training part and the other in its test part (summed over folds)."""
    n = 0
    for f in plan.folds:
        test = np.bincount(groups[f.test], minlength=groups.max() + 1)
        train = np.bincount(groups[f.train], minlength=groups.max() + 1)
        n += int((test * train).sum())
    return n


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="the first 1,500 letters only")
    ap.add_argument("--json", help="write the measurements here")
    args = ap.parse_args()
    if not MTSAMPLES.exists():
        print(f"skipped: {MTSAMPLES.name} is not in ../shared/data")
        return 0
    df = pd.read_csv(MTSAMPLES)
    df = df[df["transcription"].fillna("").str.strip() != ""][["transcription", "medical_specialty"]]
    if args.quick:
        df = df.head(1500)
        df = df[df["medical_specialty"].map(df["medical_specialty"].value_counts()) >= 10]
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "mtsamples.csv"
        df.to_csv(path, index=False)
        ds = dataset.load_dataset(path, "transcription", "medical_specialty")
    groups = plans.groups_of(ds)
    sizes = np.bincount(groups)
    t0 = time.perf_counter()
    X, stats = extract.embed("minilm", ds.texts, pooling="mean", max_length=256)
    embed_s = time.perf_counter() - t0
    y = np.asarray(ds.labels, dtype=str)
    opts = ClassifierOptions(grid=False, smote=False)
    grouped = plans.plan(ds, ProtocolOptions(protocol="cv", cv_folds=5, cv_repeats=1, seed=0))
    singletons = np.arange(len(ds))
    key = np.asarray(plans.stratify_key(ds))
    tests = plans._kfold(singletons, key, singletons, 5, plans._seed(0, 0))
    ungrouped_folds = tuple(plans.Fold(0, i, np.setdiff1d(singletons, t), t) for i, t in enumerate(tests))
    ungrouped = plans.Plan("cv", "plain stratified 5-fold", 0, 5, 1, None, ungrouped_folds, singletons, None, "ungrouped")
    rows = []
    for name, plan in (("grouped (ClinBench)", grouped), ("ungrouped", ungrouped)):
        t0 = time.perf_counter()

        def fit_predict(fold, plan=plan):
            fitted = estimators.fit(
                X[fold.train],
                y[fold.train],
                "logreg",
                opts,
                0,
                plans.splits_of(y[fold.train], plan.groups[fold.train], opts.inner_folds, 0),
            )
            return scoring.aligned(fitted.estimator.predict_proba(X[fold.test]), fitted.estimator.classes_, ds.classes)

        oof = scoring.out_of_fold([(fold, fit_predict(fold), None) for fold in plan.folds])
        m = scoring.score(ds, plan, oof, n_boot=1000, seed=0)
        rows.append(
            {
                "plan": name,
                "straddling_duplicate_pairs": straddling_pairs(groups, plan),
                "macro_f1": m["macro_f1"],
                "macro_f1_ci": m["macro_f1_ci"],
                "fold_macro_f1_mean": m["fold_macro_f1_mean"],
                "fold_macro_f1_sd": m["fold_macro_f1_sd"],
                "accuracy": m["accuracy"],
                "seconds": time.perf_counter() - t0,
            }
        )
    out = {
        "n_letters": len(ds),
        "n_classes": len(ds.classes),
        "n_distinct_texts": int(len(sizes)),
        "n_duplicate_groups": int((sizes > 1).sum()),
        "largest_group": int(sizes.max()),
        "embed_s": embed_s,
        "embedding": {"model": "minilm", "pooling": "mean", "max_length": 256, "tokens_per_s": stats.tokens_per_s},
        "estimator": "logreg, no search, no SMOTE",
        "results": rows,
        "difference_grouped_minus_ungrouped": rows[0]["macro_f1"] - rows[1]["macro_f1"],
    }
    print(
        f"MTSamples: {out['n_letters']} letters, {out['n_classes']} classes, {out['n_distinct_texts']} distinct texts, "
        f"{out['n_duplicate_groups']} duplicate groups (largest {out['largest_group']}); embedding {embed_s:.0f} s"
    )
    print(f"{'plan':22s} {'straddling pairs':>16s} {'macro-F1':>9s} {'95% CI':>15s} {'fold mean ± sd':>16s} {'accuracy':>9s}")
    for r in rows:
        lo, hi = r["macro_f1_ci"]
        print(
            f"{r['plan']:22s} {r['straddling_duplicate_pairs']:16d} {r['macro_f1']:9.3f} {lo:7.3f}-{hi:.3f} "
            f"{r['fold_macro_f1_mean']:9.3f} ± {r['fold_macro_f1_sd']:.3f} {r['accuracy']:9.3f}"
        )
    print(f"grouped - ungrouped macro-F1: {out['difference_grouped_minus_ungrouped']:+.3f}")
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
