"""How the SVC's probabilities are calibrated over more than two labels: Platt's sigmoid per label (normalised; ClinBench
before 2026-12) against temperature scaling (one temperature for the softmax of the decision values; now), on the same
folds, the same kernel and C search, the same SVC.

    python bench/svc_calibration.py [--data mtsamples.csv --text transcription --label medical_specialty]
                                    [--max-letters N] [--folds K] [--json PATH]

Each of the first K folds of the default cv plan (5 folds x 2 repeats; duplicate groups kept whole): the search as
`svc` runs it, then both calibrations fitted on the same inner splits of the training letters, scored on the fold's
test letters: macro-F1 and accuracy of the most probable label, multi-class Brier, top-label ECE and log loss, and how
often the most probable label is the SVC's own answer (its votes). Letters are MiniLM's vectors (mean pooling, the
default max_length), cached in the ClinBench cache. The default data is ../shared/data/mtsamples.csv (notes with a
transcription; the other columns name the specialty, so they are left out); --max-letters draws that many, stratified
by nothing (seed 0). Prints a table, writes JSON.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

from bench._machine import cpu_snapshot  # noqa: E402

DATA = ROOT.parent / "shared" / "data"


def letters(path: Path, text: str, label: str, max_letters: int | None):
    import pandas as pd

    from bench.frozen_scale import load
    from engine.features import extract

    df = pd.read_csv(path)
    df = df[df[text].fillna("").astype(str).str.strip() != ""][[text, label]].dropna()
    if max_letters and len(df) > max_letters:
        df = df.sample(max_letters, random_state=0)
    ds = load(df, text, label)
    X, _ = extract.embed("minilm", ds.texts, pooling="mean")
    return ds, np.asarray(X)


def scores(model, X, y, classes, votes) -> dict:
    from sklearn.metrics import f1_score, log_loss

    from engine.evaluation.calibration import calibration

    P = model.predict_proba(X)
    pred = np.asarray(classes)[P.argmax(1)]
    Y = (np.asarray(y)[:, None] == np.asarray(classes)[None, :]).astype(float)
    cal = calibration(P, Y, list(classes), kind="single", n_boot=0)
    return {
        "macro_f1": float(f1_score(y, pred, labels=classes, average="macro", zero_division=0)),
        "accuracy": float(np.mean(pred == y)),
        "brier": cal["brier"],
        "ece": cal["ece"],
        "log_loss": float(log_loss(y, P, labels=classes)),
        "is_svc_answer": float(np.mean(pred == votes)),
    }


def fold_row(X, y, groups, train, test, seed: int = 0) -> dict:
    from sklearn.base import clone
    from sklearn.calibration import CalibratedClassifierCV

    from engine.methods import estimators
    from engine.options.groups import ClassifierOptions
    from engine.protocols import plans

    opts = ClassifierOptions()
    g = groups[train]
    searched = estimators.fit(X[train], y[train], "svc", opts, seed=seed, groups=g)
    pipe = estimators.build_pipeline("svc", opts, seed, estimators.balance(y[train], opts, "svc"))
    pipe = pipe.set_params(**searched.best_params)
    inner = plans.splits_of(y[train], g, opts.inner_folds, seed)
    classes = list(searched.estimator.classes_)
    fitted = {
        m: CalibratedClassifierCV(clone(pipe), method=m, cv=inner, ensemble=False).fit(X[train], y[train])
        for m in ("sigmoid", "temperature")
    }
    votes = fitted["sigmoid"].calibrated_classifiers_[0].estimator.predict(X[test])  # the SVC fitted on every training letter
    return {
        "best_params": searched.best_params,
        "n_train": int(len(train)),
        "n_test": int(len(test)),
        **{m: scores(model, X[test], y[test], classes, votes) for m, model in fitted.items()},
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", default="mtsamples.csv", help="a CSV in ../shared/data or a path (default mtsamples.csv)")
    ap.add_argument("--text", default="transcription")
    ap.add_argument("--label", default="medical_specialty")
    ap.add_argument("--max-letters", type=int, default=None, help="draw this many letters (seed 0); default: all")
    ap.add_argument("--folds", type=int, default=3, help="the first K folds of the default cv plan (default 3)")
    ap.add_argument("--json", default="bench/results/svc_calibration.json")
    a = ap.parse_args()
    path = Path(a.data) if Path(a.data).exists() else DATA / a.data
    if not path.exists():
        print(f"{path} not found: pass --data with a CSV (text and label columns via --text/--label)", file=sys.stderr)
        return 2
    from engine.options.groups import ProtocolOptions
    from engine.protocols import plans

    ds, X = letters(path, a.text, a.label, a.max_letters)
    y = np.asarray(ds.labels)
    plan = plans.plan(ds, ProtocolOptions(protocol="cv", cv_repeats=2))
    rows = []
    print(f"{path.name}: {len(y)} letters, {len(set(y))} labels")
    print("| fold | search | calibration | macro-F1 | accuracy | Brier | ECE | log loss | most probable = SVC's answer |")
    print("|---|---|---|---|---|---|---|---|---|")
    for i, fold in enumerate(plan.folds[: a.folds]):
        row = fold_row(X, y, plan.groups, fold.train, fold.test)
        rows.append(row)
        search = ", ".join(f"{k.removeprefix('clf__')} {v}" for k, v in row["best_params"].items())
        for m in ("sigmoid", "temperature"):
            s = row[m]
            print(
                f"| {i} | {search} | {m} | {s['macro_f1']:.3f} | {s['accuracy']:.3f} | {s['brier']:.3f} | {s['ece']:.3f} | "
                f"{s['log_loss']:.3f} | {s['is_svc_answer']:.3f} |",
                flush=True,
            )
    out = {"data": path.name, "n_letters": int(len(y)), "n_labels": len(set(y)), "folds": rows, "machine": cpu_snapshot()}
    Path(a.json).parent.mkdir(parents=True, exist_ok=True)
    Path(a.json).write_text(json.dumps(out, indent=2))
    print(f"wrote {a.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
