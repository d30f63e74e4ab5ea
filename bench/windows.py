"""Long letters cut at max_length or read in overlapping windows (the embedding option `windows`): MTSamples, MiniLM + SVC.

    python bench/windows.py [--quick] [--windows 1,2,4] [--specialties 7] [--per-label 140] [--model minilm] [--json PATH]

Most MTSamples transcriptions are longer than 512 MiniLM tokens. The letters: ../shared/data/mtsamples.csv (text
`transcription`, label `medical_specialty`), the --specialties most frequent specialties (the categories that name a
document type rather than a specialty - consult, discharge summary, SOAP notes, letters, office notes, IME/QME - left
out), at most --per-label letters of each, drawn at random (seeded). Every row is the `svc` step as a run executes it
(engine.experiment: extraction, folds, the SVC's search and calibration), on one plan: stratified 5-fold cross-validation,
1 repeat, seed 0, exact duplicates grouped; the rows differ only in `windows` (1: cut at max_length, as before).

Prints per row macro-F1 with its 95% bootstrap CI, the letters still cut after the windows, the windows read, real
tokens, extraction seconds (tokenising + forward passes; model loading not counted) and the step's seconds; and each
windows row against the cut one on the same letters and folds (engine.paired: the difference with its paired-bootstrap
CI, the Nadeau-Bengio corrected t-test p). Runs in a fresh cache, so nothing is a cache hit. The machine may be shared:
each row waits (a while) for quiet CPUs and reports the CPU seconds other processes used during it.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MTSAMPLES = ROOT.parent / "shared" / "data" / "mtsamples.csv"
DOCUMENT_TYPES = (  # MTSamples categories that name a kind of document, not a specialty (shared/data/SOURCES.md)
    "Consult - History and Phy.",
    "Discharge Summary",
    "SOAP / Chart / Progress Notes",
    "Letters",
    "Office Notes",
    "IME-QME-Work Comp etc.",
)


def sample(path: Path, specialties: int, per_label: int, seed: int):
    """(rows of the chosen specialties, at most per_label each, the specialties), as a DataFrame of text and label."""
    import pandas as pd

    df = pd.read_csv(path, usecols=["transcription", "medical_specialty"]).dropna()
    df = df[df["transcription"].str.strip().astype(bool) & ~df["medical_specialty"].isin(DOCUMENT_TYPES)]
    chosen = df["medical_specialty"].value_counts().index[:specialties].tolist()
    df = df[df["medical_specialty"].isin(chosen)]
    parts = [g.sample(n=min(per_label, len(g)), random_state=seed) for _, g in df.groupby("medical_specialty", sort=True)]
    return pd.concat(parts).sample(frac=1, random_state=seed).reset_index(drop=True), chosen


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="5 specialties, 30 letters each, windows 1,4 (a minute or two)")
    ap.add_argument("--data", type=Path, default=MTSAMPLES)
    ap.add_argument("--model", default="minilm")
    ap.add_argument("--windows", default=None, help="the rows' windows, comma-separated (default 1,2,4; quick 1,4)")
    ap.add_argument("--specialties", type=int, default=None, help="most frequent specialties kept (default 7; quick 5)")
    ap.add_argument("--per-label", type=int, default=None, help="most letters per specialty (default 140; quick 30)")
    ap.add_argument("--max-length", type=int, default=512)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    if not args.data.exists():
        sys.exit(f"{args.data} not found: give MTSamples with --data")
    args.windows = [int(w) for w in (args.windows or ("1,4" if args.quick else "1,2,4")).split(",")]
    args.specialties = args.specialties or (5 if args.quick else 7)
    args.per_label = args.per_label or (30 if args.quick else 140)
    sys.path.insert(0, str(ROOT))
    from bench._machine import fresh_cache

    with fresh_cache("windows"):
        run(args)


def run(args) -> None:
    sys.path.insert(0, str(ROOT))
    sys.path.insert(0, str(ROOT / "bench"))
    from _machine import cpu_snapshot, wait_quiet

    from engine.data.dataset import load_dataset
    from engine.evaluation import paired
    from engine.options.groups import Options
    from engine.runs import experiment

    df, chosen = sample(args.data, args.specialties, args.per_label, args.seed)
    with tempfile.TemporaryDirectory() as tmp:
        csv = Path(tmp) / "mtsamples-sample.csv"
        df.to_csv(csv, index=False)
        ds = load_dataset(csv, "transcription", "medical_specialty")
        print(f"{args.data.name}: {len(ds)} letters, {len(ds.classes)} specialties ({', '.join(chosen)})", flush=True)
        rows, preds = [], {}
        for w in args.windows:
            opts = Options.parse(
                {"protocol": "cv", "cv_folds": 5, "cv_repeats": 1, "seed": args.seed, "max_length": args.max_length, "windows": w}
            )
            spec = experiment.Spec("bench-windows", experiment.DataSpec(str(csv), "transcription", "medical_specialty"),
                                   [args.model], ["svc"], opts)  # fmt: skip
            wait_quiet()
            b0, s0 = cpu_snapshot()
            t0 = time.perf_counter()
            res = experiment.execute(spec, spec.steps(reference=False)[0], dataset=ds)
            seconds = time.perf_counter() - t0
            b1, s1 = cpu_snapshot()
            m, man = res.metrics, res.manifest
            e = man["embeddings"]
            preds[w] = json.loads((Path(res.artifact) / "predictions.json").read_text())
            rows.append(
                {
                    "windows": w,
                    "macro_f1": m["macro_f1"],
                    "macro_f1_ci": m["macro_f1_ci"],
                    "accuracy": m.get("accuracy"),
                    "n_scored": m.get("n_scored"),
                    "letters_cut": e["n_truncated"],
                    "windows_read": e["n_windows"],
                    "tokens": e["n_tokens"],
                    "extract_s": e["seconds"],
                    "letters_per_s": len(ds) / e["seconds"],
                    "step_s": seconds,
                    "other_cpu_s": round(max(0.0, (b1 - b0) - (s1 - s0)), 1),
                    "best_params": man["classifier"]["best_params"],
                    "per_class_f1": {c: v["f1"] for c, v in (m.get("per_class") or {}).items()},
                }
            )
            r = rows[-1]
            print(f"windows {w}: macro-F1 {r['macro_f1']:.3f} [{r['macro_f1_ci'][0]:.3f}, {r['macro_f1_ci'][1]:.3f}], "
                  f"{r['letters_cut']} letters still cut, extraction {r['extract_s']:.1f} s", flush=True)  # fmt: skip
    cut = args.windows[0]
    for r in rows[1:]:
        res = paired.paired_comparison(preds[r["windows"]], preds[cut], ds.classes)
        r["vs_first"] = {k: res[k] for k in ("diff", "diff_ci", "p_bootstrap", "p_corrected", "corrected_ci", "n_letters")}

    print(f"\n{args.model} + svc, max_length {args.max_length}, {len(ds)} letters, 5-fold cv (1 repeat), seed {args.seed}")
    head = (f"{'windows':>7} {'macro-F1':>8} {'95% CI':>15} {'still cut':>9} {'windows read':>12} {'tokens':>9} "
            f"{'extract s':>9} {'letters/s':>9} {'step s':>7} {'vs ' + str(cut) + ' (95% CI)':>26} {'p (corr.)':>9} {'other CPU s':>11}")  # fmt: skip
    print(head + "\n" + "-" * len(head))
    for r in rows:
        ci = f"[{r['macro_f1_ci'][0]:.3f}, {r['macro_f1_ci'][1]:.3f}]"
        vs, p = "-", "-"
        if "vs_first" in r:
            d = r["vs_first"]
            vs = f"{d['diff']:+.3f} [{d['diff_ci'][0]:+.3f}, {d['diff_ci'][1]:+.3f}]"
            p = f"{d['p_corrected']:.3f}" if d["p_corrected"] is not None else f"{d['p_bootstrap']:.3f}"
        print(f"{r['windows']:>7} {r['macro_f1']:8.3f} {ci:>15} {r['letters_cut']:>9} {r['windows_read']:>12} {r['tokens']:>9} "
              f"{r['extract_s']:9.1f} {r['letters_per_s']:9.1f} {r['step_s']:7.1f} {vs:>26} {p:>9} {r['other_cpu_s']:>11}")  # fmt: skip
    print("(still cut: letters longer than the windows reach; extract s: tokenising + forward passes, model loading not counted;"
          " vs: macro-F1 difference on the same letters and folds, paired bootstrap CI; p: Nadeau-Bengio corrected t-test)")  # fmt: skip
    if args.json:
        out = {
            "dataset": args.data.name,
            "specialties": chosen,
            "n_letters": len(ds),
            "per_label": args.per_label,
            "model": args.model,
            "method": "svc",
            "max_length": args.max_length,
            "protocol": "cv 5 folds x 1 repeat",
            "seed": args.seed,
            "threads": __import__("torch").get_num_threads(),
            "cpu": platform.processor() or platform.machine(),
            "load_average": os.getloadavg()[0],
            "rows": rows,
        }
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(out, indent=2))
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
