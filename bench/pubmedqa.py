"""PubMedQA (PQA-L) on its official split: classifiers of the yes/no/maybe answer, and SmolLM2 adapted to the abstracts.

    python bench/pubmedqa.py [--rows zero-shot,classifiers,domain-adapt] [--set OPTION=VALUE ...] [--test-letters N]
                             [--threads N] --json PATH

The data and options come from examples/pubmedqa.yaml (classifiers) and examples/pubmedqa-smollm2.yaml (letter = QUESTION + CONTEXTS; LONG_ANSWER is never part of a
letter; test = the 500 PMIDs of pubmedqa_test_ground_truth.json, train = the other 500; `protocol: fixed`). Rows:

* zero-shot: SmolLM2 scoring the label words yes / no / maybe after the spec's prompt: accuracy, macro-F1 with its 95%
  bootstrap CI, seconds per letter;
* classifiers: the tf-idf reference and MiniLM embeddings + svc / logreg (the best of them is the CPU method to beat);
  MiniLM's embeddings come from the cache when an earlier run made them (the row says so);
* domain-adapt: SmolLM2 LoRA on the causal-LM objective over the training letters, each followed by the answer prompt
  and its LONG_ANSWER; perplexity of the test letters (held-out contexts) before and after, and the base and tuned
  model each writing the conclusion of the test letters (greedy): ROUGE-L F1 (0-1) and corpus BLEU (0-100) against
  LONG_ANSWER, training and generation seconds.

`--set` overrides an option of the spec for every row (e.g. max_length=128 generate_letters=100); `--test-letters N`
and `--train-letters N` keep only the first N test / training letters (file order) of the split, to bound the time of
the slow rows; both are printed
and written. Seconds are wall clock on a machine other processes may be using: the load average is reported.
`--threads` sets torch's threads (on a busy 2-core machine 1 thread is faster than 2).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench._machine import progress_context  # noqa: E402
from engine.options.groups import Options  # noqa: E402
from engine.runs import experiment  # noqa: E402

SPECS = {"classifiers": ROOT / "examples" / "pubmedqa.yaml", "smollm2": ROOT / "examples" / "pubmedqa-smollm2.yaml"}
ROWS = {"zero-shot": [("smollm2", "zero-shot")], "classifiers": [("tfidf", "tfidf"), ("minilm", "svc"), ("minilm", "logreg")]}
SHOWN = ("max_length", "epochs", "learning_rate", "batch_size", "prompt_template", "answer_prompt", "generate_letters", "generate_tokens")
ROWS["domain-adapt"] = [("smollm2", "domain-adapt")]


def _value(text: str):
    try:
        return json.loads(text)
    except ValueError:
        return text


def row(ds, spec, model: str, method: str, opts: Options) -> dict:
    one = experiment.Spec("bench-pubmedqa", spec.data, [model], [method], opts)
    t0 = time.perf_counter()
    step = next(s for s in one.steps(reference=method == "tfidf") if s["method"] == method)
    res = experiment.execute(one, step, dataset=ds, ctx=progress_context(t0, every_s=30, loss_every=20))
    seconds = time.perf_counter() - t0
    m, man = res.metrics, res.manifest
    out = {"row": f"{method} · {model}", "model": model, "method": method, "seconds": seconds, "cache_hit": res.cache_hit}
    out["timings"] = man.get("timings", {})
    out["load_avg"] = os.getloadavg()
    if method == "domain-adapt":
        keys = ("perplexity_before", "perplexity_after", "rouge_l_before", "rouge_l_after", "bleu_before", "bleu_after")
        out |= {k: m.get(k) for k in (*keys, "generated_letters")} | {"n_test": man["split"]["n_test"], "n_fit": man["split"]["n_fit"]}
        out["training"] = {k: man["training"].get(k) for k in ("best_epoch", "epochs_run", "n_truncated", "curve") if k in man["training"]}
        out["generated"] = str(Path(res.artifact) / "generated.json")
        return out
    t = out["timings"]
    n = m["n_scored"] if "n_scored" in m else len(m.get("test_rows") or []) or None
    return out | {
        "n_scored": n,
        "accuracy": m["accuracy"],
        "macro_f1": m["macro_f1"],
        "macro_f1_ci": m["macro_f1_ci"],
        "baseline_accuracy": m["baseline"].get("accuracy"),
        "baseline_macro_f1": m["baseline"]["macro_f1"],
        "s_per_letter": t.get("s_per_letter"),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", default="zero-shot,classifiers,domain-adapt")
    ap.add_argument("--set", action="append", default=[], metavar="OPTION=VALUE")
    ap.add_argument("--test-letters", type=int, default=None, help="keep only the first N test letters of the split")
    ap.add_argument("--train-letters", type=int, default=None, help="keep only the first N training letters of the split")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    given = {name: _value(text) for name, text in (s.split("=", 1) for s in args.set)}
    rows: list[dict] = []

    def save():
        if args.json:
            out = {"specs": {k: str(v.relative_to(ROOT)) for k, v in SPECS.items()}, "split": split, "options_set": given}
            args.json.write_text(json.dumps(out | {"threads": args.threads, "rows": rows}, indent=1, default=float))

    for name in args.rows.split(","):
        spec = experiment.load_spec(SPECS["classifiers" if name == "classifiers" else "smollm2"])
        ds = spec.data.load()
        for part, keep in (("test", args.test_letters), ("train", args.train_letters)):
            if keep is not None:
                ds = ds.without([i for i, s in enumerate(ds.split) if s == part][keep:])
        split = {"train": ds.split.count("train"), "test": ds.split.count("test")}
        opts = spec.options.replace(**given) if given else spec.options
        for model, method in ROWS[name]:
            print(f"running {method} on {model} ...", file=sys.stderr, flush=True)
            rows.append(row(ds, spec, model, method, opts) | {"options": {k: opts.get(k) for k in SHOWN}})
            save()
    print(f"\nPubMedQA official split ({split['train']} train / {split['test']} test letters), options set: {given or 'none'}")
    print(f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs, torch threads {args.threads or 'default'}")
    print(f"{'row':24s} {'accuracy':>8s} {'macro-F1':>8s} {'95% CI':>15s} {'s/letter':>8s} {'seconds':>8s} cache")
    for r in rows:
        if "macro_f1" in r:
            ci, spl = f"[{r['macro_f1_ci'][0]:.3f}, {r['macro_f1_ci'][1]:.3f}]", r["s_per_letter"]
            spl = "" if spl is None else f"{spl:.2f}"
            print(f"{r['row']:24s} {r['accuracy']:8.3f} {r['macro_f1']:8.3f} {ci:>15s} {spl:>8s} {r['seconds']:8.1f} {r['cache_hit']}")
            base = (r["baseline_accuracy"], r["baseline_macro_f1"])
    if any("macro_f1" in r for r in rows):
        print(f"{'majority class':24s} {base[0] or float('nan'):8.3f} {base[1]:8.3f}")
    for r in rows:
        if r["method"] == "domain-adapt":
            t = r["timings"]
            print(f"\ndomain-adapt · smollm2: {r['n_fit']} fitting letters, perplexity on {r['n_test']} test letters, "
                  f"answers written for {r['generated_letters']}")  # fmt: skip
            print(f"{'':10s} {'perplexity':>10s} {'ROUGE-L':>8s} {'BLEU':>6s} {'generation s':>12s}")
            for when in ("before", "after"):
                print(f"{when:10s} {r[f'perplexity_{when}']:10.2f} {r[f'rouge_l_{when}']:8.3f} {r[f'bleu_{when}']:6.2f} "
                      f"{t.get(f'generate_{when}_s', float('nan')):12.0f}")  # fmt: skip
            print(f"training {t.get('train_s', float('nan')):.0f} s, step {r['seconds']:.0f} s; written answers: {r['generated']}")
    if args.json:
        save()
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
