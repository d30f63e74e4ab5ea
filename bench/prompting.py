"""A generative model as the classifier: zero-shot and few-shot SmolLM2 on the default letters, and the prompt and scoring
variants behind the defaults.

    python bench/prompting.py [--model smollm2] [--letters N] [--variants/--no-variants] --json PATH

Rows, all on the test letters of one plan (the default options: the 600 default letters -> a hold-out split of 120):

* the steps as `python -m engine evaluate --method zero-shot|few-shot` runs them (shipped defaults; few-shot with its
  default k and with k=4; few-shot averages the examples' prompt with the letter alone, the option with_letter_alone):
  macro-F1 with its 95% bootstrap CI, seconds and seconds per letter;
* variants of the zero-shot prompt (engine.methods.prompting.PROMPTS) x scoring (sum, mean, norm) x calibration (on/off),
  from one scoring pass per prompt (scores of every variant come from the same label log-likelihoods).

`--letters N` scores only the first N test letters in the variant rows (the step rows always score the whole plan).
The defaults were picked on 60 *training* letters of the same split (12 per label), never on these test letters.
The machine may be shared: seconds are wall-clock, with the load average reported.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from engine.data.dataset import default_dataset
from engine.methods import prompting
from engine.options.groups import Options
from engine.protocols import plans
from engine.runs import experiment


def step_row(ds, model: str, method: str, label: str, **options) -> dict:
    opts = Options.parse({"n_boot": 1000, **options})
    spec = experiment.Spec("bench", experiment.DataSpec(), [model], [method], opts)
    t = time.perf_counter()
    res = experiment.execute(spec, spec.steps(reference=False)[0], dataset=ds)
    seconds = time.perf_counter() - t
    m, man = res.metrics, res.manifest
    demos = (man.get("prompt") or {}).get("demonstrations") or {}
    return {
        "row": label,
        "method": method,
        "macro_f1": m["macro_f1"],
        "macro_f1_ci": m["macro_f1_ci"],
        "accuracy": m["accuracy"],
        "baseline_macro_f1": m["baseline"]["macro_f1"],
        "n_scored": m["n_scored"],
        "seconds": seconds,
        "s_per_letter": man["timings"]["s_per_letter"],
        "cache_hit": res.cache_hit,
        "k_per_label": demos.get("k_per_label"),
        "example_tokens": demos.get("letter_tokens"),
        "prefix_tokens": demos.get("prefix_tokens"),
    }


def variant_rows(ds, model: str, test: np.ndarray, max_length: int, prompts: list[str], rows: list[dict], save) -> list[dict]:
    from engine.evaluation import metrics

    lm = prompting.load_lm(model)
    y = np.asarray(ds.labels, dtype=str)[test]
    for name in prompts:
        template = prompting.PROMPTS[name]
        sc = prompting.Scorer(lm, ds.classes, template, None, max_length)
        t = time.perf_counter()
        sums = sc.token_logprobs([ds.texts[i] for i in test])
        prior = sc.prior()
        seconds = time.perf_counter() - t
        for scoring in prompting.SCORINGS:
            for calibrated in (True, False):
                pred = np.asarray(ds.classes)[sc.scores(sums, scoring, prior if calibrated else None).argmax(1)]
                m = metrics.metrics(y, pred, labels=ds.classes, clusters=test, n_boot=1000, seed=0)
                rows.append(
                    {
                        "row": f"zero-shot {name} / {scoring} / {'calibrated' if calibrated else 'raw'}",
                        "prompt": name,
                        "scoring": scoring,
                        "calibration": calibrated,
                        "macro_f1": m["macro_f1"],
                        "macro_f1_ci": m["macro_f1_ci"],
                        "n_scored": len(test),
                        "seconds": seconds,
                        "s_per_letter": seconds / len(test),
                    }
                )
        print(f"  scored prompt {name!r}: {seconds:.0f} s", flush=True)
        save()
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2")
    ap.add_argument("--letters", type=int, default=None, help="variant rows: score only the first N test letters")
    ap.add_argument("--variants", action=argparse.BooleanOptionalAction, default=True)
    ap.add_argument("--steps", default="zero-shot,few-shot,few-shot-k4", help="which step rows to run")
    ap.add_argument(
        "--prompts", default=",".join(prompting.PROMPTS), help="variant rows: which prompts of engine.methods.prompting.PROMPTS"
    )
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    ds = default_dataset()
    opts = Options()
    plan = plans.plan(ds, opts.protocol, "zero-shot")
    rows = []

    def save():
        if args.json:
            out = {"model": args.model, "plan": plan.manifest() | {"folds": None}, "load_average": os.getloadavg(), "rows": rows}
            args.json.write_text(json.dumps(out, indent=1, default=float))

    wanted = args.steps.split(",") if args.steps else []
    for label, method, extra in (
        ("zero-shot", "zero-shot", {}),
        ("few-shot (default k)", "few-shot", {}),
        ("few-shot k=4", "few-shot", {"k_shot": 4}),
    ):
        if label.split(" ")[0] + ("-k4" if "k_shot" in extra else "") in wanted:
            print(f"running {label} ...", flush=True)
            rows.append(step_row(ds, args.model, method, label, **extra))
            save()
    if args.variants:
        test = np.sort(np.concatenate([f.test for f in plan.folds]))[: args.letters]
        variant_rows(ds, args.model, test, opts.embedding.max_length, args.prompts.split(","), rows, save)
    print(f"\n{args.model} on the {len(ds)} default letters, {plan.reason}; load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
    print(f"{'row':<46} {'macro-F1':>8} {'95% CI':>15} {'n':>4} {'s':>7} {'s/letter':>8}")
    for r in rows:
        lo, hi = r["macro_f1_ci"]
        print(
            f"{r['row']:<46} {r['macro_f1']:>8.3f} {f'[{lo:.3f}, {hi:.3f}]':>15} {r['n_scored']:>4} {r['seconds']:>7.0f} {r['s_per_letter']:>8.2f}"
        )
    if args.json:
        save()
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
