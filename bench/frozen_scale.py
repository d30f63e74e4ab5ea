"""Seconds per fit of the frozen classifiers (svc, logreg) against the number of letters and labels, before and after
the scaling defaults (where SMOTE would multiply the rows: class weights for logreg, SMOTE capped at the growth limit for
the SVC; logistic regression's warm-started C path; inner folds in parallel).

    python bench/frozen_scale.py [--quick] [--before-max-rows N] [--no-sweep] [--compare [--compare-labels K]
                                 [--compare-letters N] [--compare-methods svc,logreg]] [--json PATH]

One fit is what a cv evaluation repeats folds x repeats + 1 times (11 under the defaults): the search of C (and the
SVC's kernel) on the inner folds, the refit, and the SVC's calibration, all on one training part. The sweep fits
synthetic 384-dimensional vectors (MiniLM's width): Gaussian labels of Zipf-like sizes (the k-th label has 1/k of the
first's letters, at least 6), as clinical labels are. "before" is the former code path: SMOTE whatever it multiplies the
rows by, an independent GridSearchCV fit per C, one fit at a time; it is skipped where SMOTE would make more than
--before-max-rows rows (it then takes minutes per fit). When ../shared/data/mtsamples.csv is present it also fits one
training part (the first fold of the default cv plan) of MiniLM's vectors of its 4,966 notes (mean pooling, the
default max_length; embedded once into the ClinBench cache, not timed), and with --compare scores the former and the
new path under the default cv plan (5 folds x 2 repeats, the same folds for both) on a subset where the former finishes:
the K largest specialties (default 8), N notes drawn stratified (seed 0; default 1,200), macro-F1 with its 95% CI.
Prints tables, writes JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from unittest import mock

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

from bench._machine import cpu_snapshot  # noqa: E402
from engine.methods import estimators  # noqa: E402
from engine.options.groups import ClassifierOptions  # noqa: E402
from engine.protocols import plans  # noqa: E402

MTSAMPLES = ROOT.parent / "shared" / "data" / "mtsamples.csv"
DIM = 384


def zipf_labels(n: int, k: int, dim: int = DIM, seed: int = 0, spread: float = 0.35) -> tuple[np.ndarray, np.ndarray]:
    """n vectors in k Gaussian labels of sizes proportional to 1/rank (at least 6 letters each)."""
    rng = np.random.default_rng(seed)
    w = 1.0 / np.arange(1, k + 1)
    sizes = np.maximum(6, np.floor(n * w / w.sum())).astype(int)
    centres = rng.normal(scale=spread, size=(k, dim))
    X = np.vstack([rng.normal(size=(s, dim)) + centres[i] for i, s in enumerate(sizes)])
    y = np.repeat([f"label{i:02d}" for i in range(k)], sizes)
    return X.astype(np.float32), y


def before_fit(X, y, estimator: str, seed: int = 0, groups=None):
    """The former path: SMOTE always, an independent fit per grid point (GridSearchCV), serial; the fitted estimator."""
    from sklearn.model_selection import GridSearchCV

    opts = ClassifierOptions(oversample_limit=1000.0)
    with mock.patch.object(estimators, "inner_jobs", lambda tasks: 1):
        if estimator == "svc":
            return estimators.fit(X, y, "svc", opts, seed, groups).estimator
        cv = plans.splits_of(y, groups, opts.inner_folds, seed)
        pipe = estimators.build_pipeline("logreg", opts, seed)
        search = GridSearchCV(pipe, estimators.param_grid("logreg"), scoring="f1_macro", cv=cv, n_jobs=1, error_score="raise")
        return search.fit(X, y).best_estimator_


def timed(fn) -> tuple[float, float]:
    """(wall seconds, share of the machine's busy CPU time that was this process's) of fn()."""
    b0, s0 = cpu_snapshot()
    t0 = time.perf_counter()
    fn()
    wall = time.perf_counter() - t0
    b1, s1 = cpu_snapshot()
    return wall, (s1 - s0) / max(b1 - b0, 1e-9)


def balance_name(bal) -> str:
    if not bal.smote:
        return "class weights"
    return "smote capped" if bal.capped else "smote"


def row(source: str, X, y, before_max_rows: int) -> list[dict]:
    g = estimators.growth(y)
    out = []
    for est in estimators.ESTIMATORS:
        after_s, share = timed(lambda est=est: estimators.fit(X, y, est, ClassifierOptions(), 0))
        smote_rows = int(round(g * len(y)))
        before_s = None
        if smote_rows <= before_max_rows:
            before_s, _ = timed(lambda est=est: before_fit(X, y, est))
        out.append(
            {
                "source": source,
                "estimator": est,
                "letters": len(y),
                "labels": len(set(y.tolist())),
                "smote_growth": round(g, 2),
                "balance": balance_name(estimators.balance(y, ClassifierOptions(), est)),
                "after_s": after_s,
                "before_s": before_s,
                "speed_up": before_s / after_s if before_s else None,
                "this_process_cpu_share": share,
                "load_1min": os.getloadavg()[0],
            }
        )
        r = out[-1]
        b = f"{before_s:9.1f}" if before_s is not None else f"{'(skipped)':>9s}"
        print(
            f"{source:10s} {est:7s} {r['letters']:7d} {r['labels']:6d} {g:7.2f} {r['balance']:>13s} {after_s:8.1f} {b} "
            f"{(r['speed_up'] or float('nan')):7.1f} {r['load_1min']:6.1f}",
            flush=True,
        )
    return out


def load(df, text: str = "transcription", label: str = "medical_specialty"):
    """The letters of a data frame, read as ClinBench reads a CSV (through a temporary file)."""
    from engine.data import dataset

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "letters.csv"
        df.to_csv(path, index=False)
        return dataset.load_dataset(path, text, label)


def mtsamples(path: Path):
    """The notes with a transcription (label: medical_specialty; the other columns name the specialty, so they are left
    out), and MiniLM's vectors of them (cached)."""
    import pandas as pd

    from engine.features import extract

    df = pd.read_csv(path)
    df = df[df["transcription"].fillna("").str.strip() != ""][["transcription", "medical_specialty"]]
    ds = load(df)
    X, _ = extract.embed("minilm", ds.texts, pooling="mean")
    return df, ds, np.asarray(X)


def cv_plan(ds):
    from engine.options.groups import ProtocolOptions

    return plans.plan(ds, ProtocolOptions(protocol="cv", cv_repeats=2))


def compare(df, full_ds, X, labels: int = 8, letters: int = 1200, estimators_: tuple = estimators.ESTIMATORS) -> list[dict]:
    """Former vs new path, cv macro-F1 (95% CI) and seconds, on the `labels` largest specialties, `letters` notes
    (stratified, seed 0)."""
    from sklearn.model_selection import train_test_split

    from engine.evaluation import scoring

    top = df["medical_specialty"].value_counts().index[:labels]
    sub = df[df["medical_specialty"].isin(top)]
    if letters < len(sub):
        sub, _ = train_test_split(sub, train_size=letters, stratify=sub["medical_specialty"], random_state=0)
    ds = load(sub.sort_index())
    row_of = {t: i for i, t in enumerate(full_ds.texts)}
    Xs = X[[row_of[t] for t in ds.texts]]
    y = np.asarray(ds.labels, dtype=str)
    plan = cv_plan(ds)
    print(f"\nsubset: {len(ds)} notes, {len(ds.classes)} specialties, SMOTE growth {estimators.growth(y):.2f}, {len(plan.folds)} folds")
    print(f"{'method':7s} {'path':7s} {'macro-F1':>8s} {'95% CI':>13s} {'seconds':>8s} {'load':>5s}")
    out = []
    for est in estimators_:
        for path in ("before", "after"):
            t0 = time.perf_counter()
            parts = []
            for fold in plan.folds:
                g = plan.groups[fold.train]
                if path == "before":
                    model = before_fit(Xs[fold.train], y[fold.train], est, 0, g)
                else:
                    model = estimators.fit(Xs[fold.train], y[fold.train], est, ClassifierOptions(), 0, g).estimator
                parts.append((fold, scoring.aligned(model.predict_proba(Xs[fold.test]), model.classes_, ds.classes), None))
            seconds = time.perf_counter() - t0
            m = scoring.score(ds, plan, scoring.out_of_fold(parts), n_boot=1000, seed=0)
            r = {"estimator": est, "path": path, "macro_f1": m["macro_f1"], "macro_f1_ci": m["macro_f1_ci"], "seconds": seconds}
            r["load_1min"] = os.getloadavg()[0]
            out.append(r)
            lo, hi = r["macro_f1_ci"]
            print(f"{est:7s} {path:7s} {r['macro_f1']:8.3f} {lo:6.3f}-{hi:.3f} {seconds:8.1f} {r['load_1min']:5.1f}", flush=True)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="two sizes and two label counts only")
    ap.add_argument("--before-max-rows", type=int, default=8000, help="skip the former path above this many SMOTE rows")
    ap.add_argument("--no-real", action="store_true", help="skip the MTSamples fit timing (--compare still runs)")
    ap.add_argument("--mtsamples", type=Path, default=MTSAMPLES, help="the MTSamples CSV (default: ../shared/data/mtsamples.csv)")
    ap.add_argument("--no-sweep", action="store_true", help="skip the synthetic sweep")
    ap.add_argument("--compare", action="store_true", help="MTSamples: also score both paths under cv on a subset")
    ap.add_argument("--compare-labels", type=int, default=8, help="--compare: the subset's largest specialties (default 8)")
    ap.add_argument("--compare-letters", type=int, default=1200, help="--compare: the subset's notes, drawn stratified (default 1200)")
    ap.add_argument("--compare-methods", default=",".join(estimators.ESTIMATORS), help="--compare: which of svc,logreg")
    ap.add_argument("--json", help="write the measurements here")
    args = ap.parse_args()
    sizes, labels = ((500, 2000), (5, 40)) if args.quick else ((500, 1000, 2000, 4000), (5, 10, 20, 40))
    print(f"cores {len(os.sched_getaffinity(0))}, inner jobs {estimators.inner_jobs(99)}, load at start {os.getloadavg()}")
    print(
        f"{'source':10s} {'method':7s} {'letters':>7s} {'labels':>6s} {'growth':>7s} {'balance':>13s} {'after s':>8s} {'before s':>9s} {'× faster':>7s} {'load':>6s}"
    )
    rows, compared = [], None
    for n in sizes if not args.no_sweep else ():
        for k in labels:
            X, y = zipf_labels(n, k)
            rows += row("synthetic", X, y, args.before_max_rows)
    if args.mtsamples.exists() and (args.compare or not args.no_real):
        df, ds, X = mtsamples(args.mtsamples)
        train = cv_plan(ds).folds[0].train
        if not args.no_real:
            rows += row("mtsamples", X[train], np.asarray(ds.labels, dtype=str)[train], args.before_max_rows)
        if args.compare:
            compared = compare(df, ds, X, args.compare_labels, args.compare_letters, tuple(args.compare_methods.split(",")))
    if args.json:
        out = {"dim": DIM, "cores": len(os.sched_getaffinity(0)), "rows": rows, "subset_cv": compared}
        Path(args.json).write_text(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
