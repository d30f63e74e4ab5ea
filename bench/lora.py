"""Speed and memory of ClinBench's LoRA fine-tuning against a plain transformers.Trainer + peft baseline.

    python bench/lora.py [--quick] --json PATH

For MiniLM (encoder) and SmolLM2 (decoder) it trains a LoRA sequence classifier on the same letters of
the bundled default dataset three ways, each in its own fresh subprocess (so that peak RSS, model loading
included, is that configuration's alone):

* engine       - `engine.finetune.loop.train` as the `lora` step runs it (`load_classifier_model`,
                 `prepare_trainable`, `extract.tokenize`, class-weighted cross-entropy): length-grouped
                 batches with dynamic padding, AdamW, warm-up/decay, grad clipping, and bf16 autocast where
                 the default placement picks bf16 (fp32 weights and optimiser state);
* engine_fp32  - the same with CLINBENCH_DTYPE=float32 (no autocast): how much of the speed is the loop
                 and how much bf16;
* baseline     - plain `transformers.Trainer` + `peft.get_peft_model` with the same LoraConfig (r, alpha,
                 dropout, target modules, the head in modules_to_save), the model loaded in fp32, the
                 tokenizer's own truncation at the same max_length, `DataCollatorWithPadding` (dynamic
                 padding), the same per-device batch size, learning rate, warm-up and number of optimiser
                 steps; no evaluation, no saving, no reporting, dataloader_num_workers=0, fp32, use_cpu.

Both sides train one epoch over the same (warm-up + timed) x batch letters, so each sees every letter
exactly once; the first `--warmup` optimiser steps are excluded from the timing. Reported: optimiser
steps/s and real (non-padding) training tokens/s over the timed steps, tokens per step (real and padded)
for both sides, peak RSS (ru_maxrss of the subprocess, at its end), and a split of each timed step into
forward / backward (+loss, grad clipping) / optimiser / the rest (batching, scheduler, loop overhead),
taken with the same module and optimiser hooks on both sides.

Configurations alternate within each model (engine, baseline, engine_fp32, then the reverse order) for
`--rounds` rounds; speeds are medians over rounds (leaving out runs during which other processes used more
than 10% of the CPUs, where an undisturbed run of that configuration exists), RSS the maximum. The machine
may be shared: before each run the script waits (a while) for quiet CPUs and reports the CPU time other
processes used during the timed steps. Targets: engine >= 1.5x the baseline's steps/s, and peak RSS <= the baseline's.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# The parent process stays light (no torch): a child's ru_maxrss starts from its parent's high-water mark at exec.
ROOT = Path(__file__).resolve().parents[1]
SPEEDUP_TARGET = 1.5  # engine steps/s over the baseline's
RSS_TARGET = 1.0  # engine peak RSS over the baseline's, at most
CONFIGS = ("engine", "baseline", "engine_fp32")
FULL_STEPS = {"minilm": 30, "smollm2": 15}
QUICK_STEPS = {"minilm": 6, "smollm2": 3}


# --- measuring under a possibly shared machine (as in bench/extract.py) ---------------------

from _machine import cpu_snapshot, wait_quiet  # noqa: E402  (bench/ is on sys.path when run as a script)


def _memory() -> dict:
    """Peak RSS so far: ru_maxrss and VmHWM (MiB), and the current RSS."""
    out = {"ru_maxrss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith(("VmHWM:", "VmRSS:")):
                    out[line.split(":")[0].lower() + "_mb"] = int(line.split()[1]) / 1024
    except OSError:
        pass
    return out


# --- inside a subprocess: one training run ---------------------------------------------------


class StepClock:
    """Per optimiser step: wall time at its end, and forward / backward / optimiser time, from a forward
    pre/post hook on the top module and global optimiser step hooks - installed the same way on both sides."""

    def __init__(self, model):
        from torch.optim.optimizer import register_optimizer_step_post_hook, register_optimizer_step_pre_hook

        self.ends: list[float] = []
        self.parts: list[dict] = []
        self._cur: dict = {}
        self._other0: tuple[float, float] | None = None
        self.other_cpu_s = 0.0
        self.rss_mb: list[float] = []  # current RSS at the end of each step
        self.first_step_memory: dict = {}
        model.register_forward_pre_hook(lambda *_: self._mark("f0"))
        model.register_forward_hook(lambda *_: self._mark("f1"))
        register_optimizer_step_pre_hook(lambda *_: self._mark("o0"))
        register_optimizer_step_post_hook(lambda *_: self._mark("o1"))

    def _mark(self, name: str) -> None:
        self._cur.setdefault(name, time.perf_counter())

    def step_end(self, warmup: int) -> None:
        now = time.perf_counter()
        c, start = self._cur, (self.ends[-1] if self.ends else None)
        if start is not None and all(k in c for k in ("f0", "f1", "o0", "o1")):
            fwd, bwd, opt = c["f1"] - c["f0"], c["o0"] - c["f1"], c["o1"] - c["o0"]
            self.parts.append({"forward": fwd, "backward": bwd, "optimizer": opt, "other": (now - start) - fwd - bwd - opt})
        else:
            self.parts.append({})
        self.ends.append(now)
        self._cur = {}
        self.rss_mb.append(_memory().get("vmrss_mb", 0.0))
        if len(self.ends) == 1:
            self.first_step_memory = _memory()
        if len(self.ends) == warmup and Path("/proc/stat").exists():
            self._other0 = cpu_snapshot()

    def summary(self, warmup: int, tokens: list[int], padded: list[int]) -> dict:
        n = len(self.ends)
        if self._other0 is not None:
            b1, s1 = cpu_snapshot()
            self.other_cpu_s = max(0.0, (b1 - self._other0[0]) - (s1 - self._other0[1]))
        timed = n - warmup
        seconds = self.ends[-1] - self.ends[warmup - 1]
        parts = self.parts[warmup:]
        split = {k: 1000 * sum(p.get(k, 0.0) for p in parts) / timed for k in ("forward", "backward", "optimizer", "other")}
        return {
            "steps_total": n,
            "steps_timed": timed,
            "seconds": seconds,
            "steps_per_s": timed / seconds,
            "tokens_timed": int(sum(tokens[warmup:n])),
            "padded_tokens_timed": int(sum(padded[warmup:n])),
            "tokens_per_s": sum(tokens[warmup:n]) / seconds,
            "ms_per_step": split,
            "other_cpu_s": self.other_cpu_s,
            "rss_per_step_mb": [round(x) for x in self.rss_mb],
        }


def child_prep(spec: dict) -> dict:
    """Pick the letters; the model's folder, LoRA targets and head modules as the engine chooses them."""
    import numpy as np

    from engine.data import dataset
    from engine.features import extract
    from engine.finetune import loading
    from engine.models import catalog
    from engine.models.devices import choose

    ds = dataset.default_dataset()
    n = min(len(ds.texts), spec["n_letters"])
    texts, labels = list(ds.texts[:n]), [str(v) for v in ds.labels[:n]]
    net, tok, identity, kind, head = loading.load_classifier_model(spec["model"], ds.classes, choose())
    ids, n_trunc = extract.tokenize(tok, texts, spec["max_length"])
    lengths = np.array([len(x) for x in ids])
    return {
        "texts": texts,
        "labels": labels,
        "classes": list(ds.classes),
        "folder": str(catalog.locate(catalog.resolve(spec["model"]))[0]),
        "head": head,
        "targets": loading.default_target_modules(net),
        "kind": kind,
        "model_type": identity.get("model_type"),
        "n_params": int(sum(p.numel() for p in net.parameters())),
        "n_letters": n,
        "n_truncated": int(n_trunc),
        "mean_tokens_per_letter": float(lengths.mean()),
        "dataset": ds.source,
    }


def child_engine(spec: dict) -> dict:
    mem = {"start": _memory()}
    import numpy as np
    import torch

    from engine.cache.context import StepContext
    from engine.features import extract
    from engine.finetune import heads, loading, loop
    from engine.methods import lora as head_step
    from engine.models.devices import choose
    from engine.options.groups import Options

    placement = choose()
    prep = spec["prep"]
    classes = prep["classes"]
    mem["imports"] = _memory()
    net, tok, _identity, _kind, head = loading.load_classifier_model(spec["model"], classes, placement)
    mem["model_loaded"] = _memory()
    opts = Options.parse({"max_length": spec["max_length"], "batch_size": spec["batch_size"], "epochs": 1})
    ft = opts.finetune.resolved("lora")
    trained, targets = loading.prepare_trainable(net, "lora", head, ft)
    ids, n_trunc = extract.tokenize(tok, prep["texts"], spec["max_length"])
    y_all = np.asarray([classes.index(v) for v in prep["labels"]])
    weights = heads.class_weights(y_all, len(classes), ft.class_weighted_loss)
    y_t = torch.from_numpy(y_all)
    clock = StepClock(trained)
    tokens: list[int] = []
    padded: list[int] = []

    def loss_fn(input_ids, mask, batch):  # as finetune.classifier_step builds it
        tokens.append(int(mask.sum()))
        padded.append(int(mask.numel()))
        logits = trained(input_ids=input_ids, attention_mask=mask).logits.float()
        return torch.nn.functional.cross_entropy(
            logits, y_t[batch].to(logits.device), weight=weights.to(logits.device) if weights is not None else None
        )

    def progress(_done, _total, message):
        if message.startswith("training"):  # called after each batch; grad_accum is 1, so after each optimiser step
            clock.step_end(spec["warmup"])

    key = f"bench-lora-{spec['model']}-{os.getpid()}-{time.time_ns()}"
    mem["before_train"] = _memory()
    try:
        state = loop.train(
            trained,
            ids,
            np.arange(len(ids)),
            loss_fn,
            lambda: {"score": 0.0},
            ft,
            opts.protocol.seed,
            placement,
            pad_id=tok.pad_token_id,
            key=key,
            head_lr_factor=head_step.HEAD_LR_FACTOR,
            is_head=lambda name: "modules_to_save" in name,
            ctx=StepContext(progress=progress),
        )
    finally:
        loop.checkpoint_path(key).unlink(missing_ok=True)
    mem["end"] = _memory()
    mem["first_step"] = clock.first_step_memory
    out = clock.summary(spec["warmup"], tokens, padded)
    assert state["steps"] == out["steps_total"], (state["steps"], out["steps_total"])
    return {
        **out,
        "memory": mem,
        "dtype": placement.dtype,
        "autocast": placement.dtype == "bfloat16",
        "targets": targets,
        "head": head,
        "engine_tokens_total": state["tokens"],
        "tokens_total": int(sum(tokens)),
        "n_truncated": n_trunc,
        "trainable_params": int(sum(p.numel() for p in trained.parameters() if p.requires_grad)),
        "threads": torch.get_num_threads(),
    }


def child_baseline(spec: dict) -> dict:
    mem = {"start": _memory()}
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import (
        AutoModelForSequenceClassification,
        AutoTokenizer,
        DataCollatorWithPadding,
        Trainer,
        TrainerCallback,
        TrainingArguments,
    )

    prep = spec["prep"]
    classes = prep["classes"]
    mem["imports"] = _memory()
    tok = AutoTokenizer.from_pretrained(prep["folder"])
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    model = AutoModelForSequenceClassification.from_pretrained(
        prep["folder"],
        num_labels=len(classes),
        id2label=dict(enumerate(classes)),
        label2id={c: i for i, c in enumerate(classes)},
        dtype=torch.float32,
    )
    model.config.pad_token_id = tok.pad_token_id
    mem["model_loaded"] = _memory()
    lora = LoraConfig(
        task_type="SEQ_CLS",
        r=spec["lora_r"],
        lora_alpha=spec["lora_alpha"],
        lora_dropout=spec["lora_dropout"],
        target_modules=prep["targets"],
        modules_to_save=prep["head"] or None,
    )
    peft_model = get_peft_model(model, lora)
    enc = tok(prep["texts"], truncation=True, max_length=spec["max_length"])
    train_set = [{**{k: enc[k][i] for k in enc}, "labels": classes.index(lab)} for i, lab in enumerate(prep["labels"])]
    collator = DataCollatorWithPadding(tok)
    tokens: list[int] = []
    padded: list[int] = []

    def collate(features):  # the plain collator; only counts what it produced
        batch = collator(features)
        tokens.append(int(batch["attention_mask"].sum()))
        padded.append(int(batch["attention_mask"].numel()))
        return batch

    clock = StepClock(peft_model)
    warmup = spec["warmup"]

    class Clock(TrainerCallback):
        def on_step_end(self, args, state, control, **kw):
            clock.step_end(warmup)

    steps = spec["warmup"] + spec["steps"]
    with tempfile.TemporaryDirectory() as tmp:
        args = TrainingArguments(
            output_dir=tmp,
            per_device_train_batch_size=spec["batch_size"],
            max_steps=steps,
            learning_rate=spec["learning_rate"],
            warmup_steps=int(spec["warmup_ratio"] * steps),
            lr_scheduler_type="linear",
            weight_decay=spec["weight_decay"],
            max_grad_norm=1.0,
            eval_strategy="no",
            save_strategy="no",
            logging_strategy="no",
            report_to=[],
            dataloader_num_workers=0,
            use_cpu=True,
            disable_tqdm=True,
            seed=spec["seed"],
        )
        trainer = Trainer(model=peft_model, args=args, train_dataset=train_set, data_collator=collate, callbacks=[Clock()])
        mem["before_train"] = _memory()
        result = trainer.train()
    mem["end"] = _memory()
    mem["first_step"] = clock.first_step_memory
    out = clock.summary(warmup, tokens, padded)
    assert result.global_step == out["steps_total"], (result.global_step, out["steps_total"])
    return {
        **out,
        "memory": mem,
        "dtype": "float32",
        "autocast": False,
        "optim": str(args.optim),
        "tokens_total": int(sum(tokens[:steps])),
        "trainable_params": int(sum(p.numel() for p in peft_model.parameters() if p.requires_grad)),
        "threads": torch.get_num_threads(),
    }


def child_main(mode: str, spec_path: Path, out_path: Path) -> int:
    sys.path.insert(0, str(ROOT))
    spec = json.loads(spec_path.read_text())
    fn = {"prep": child_prep, "engine": child_engine, "baseline": child_baseline}[mode]
    result = fn(spec)
    mem = _memory()
    result["peak_rss_mb"] = mem["ru_maxrss_mb"]
    result["peak_vmhwm_mb"] = mem.get("vmhwm_mb")
    if mode != "prep":
        import peft
        import torch
        import transformers

        result["versions"] = {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "peft": peft.__version__,
            "accelerate": __import__("accelerate").__version__,
        }
    out_path.write_text(json.dumps(result))
    return 0


# --- the parent: runs the subprocesses, prints, writes JSON -------------------------------------


def run_child(mode: str, spec: dict, workdir: Path, env: dict, quiet: bool = True) -> dict:
    spec_path, out_path = workdir / f"spec-{mode}.json", workdir / f"out-{mode}.json"
    spec_path.write_text(json.dumps(spec))
    out_path.unlink(missing_ok=True)
    if quiet:
        wait_quiet()
    t0 = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, str(Path(__file__).resolve()), "--child", mode, "--spec", str(spec_path), "--out", str(out_path)],
        env=env,
        cwd=str(ROOT),
        capture_output=True,
        text=True,
    )
    if proc.returncode != 0 or not out_path.exists():
        sys.stderr.write(proc.stdout[-4000:] + proc.stderr[-8000:])
        raise SystemExit(f"the {mode} run of {spec.get('model')} failed (exit {proc.returncode})")
    result = json.loads(out_path.read_text())
    result["wall_s"] = time.perf_counter() - t0
    return result


def make_env(cache: Path, dtype: str | None) -> dict:
    env = {
        **os.environ,
        "CLINBENCH_CACHE": str(cache),
        "TOKENIZERS_PARALLELISM": "false",
        "PYTHONWARNINGS": "ignore",
        "TRANSFORMERS_VERBOSITY": "error",
        "HF_HUB_OFFLINE": "1",
    }
    env.pop("CLINBENCH_DTYPE", None)
    if dtype:
        env["CLINBENCH_DTYPE"] = dtype
    return env


def temp_cache(workdir: Path) -> Path:
    """A throw-away cache folder (checkpoints land here) that reuses the real cache's converted models."""
    real = Path(os.environ.get("CLINBENCH_CACHE") or ROOT / "cache").expanduser().resolve()
    cache = workdir / "cache"
    cache.mkdir()
    (real / "models").mkdir(parents=True, exist_ok=True)  # smollm2 is converted there once and reused
    (cache / "models").symlink_to(real / "models", target_is_directory=True)
    if (real / "hashes.json").exists():
        shutil.copy(real / "hashes.json", cache / "hashes.json")
    return cache


def measure_model(name: str, args, workdir: Path, cache: Path) -> dict:
    steps = args.steps or (QUICK_STEPS if args.quick else FULL_STEPS).get(name, 10)
    n_letters = (args.warmup + steps) * args.batch
    base = {
        "model": name,
        "max_length": args.max_length,
        "batch_size": args.batch,
        "warmup": args.warmup,
        "steps": steps,
        "lora_r": 8,
        "lora_alpha": 16,
        "lora_dropout": 0.1,
        "learning_rate": 5e-4,
        "warmup_ratio": 0.1,
        "weight_decay": 0.0,
        "seed": 0,
    }
    prep = run_child("prep", {**base, "n_letters": n_letters}, workdir, make_env(cache, None), quiet=False)
    if prep["n_letters"] < n_letters:
        raise SystemExit(f"{name}: the default dataset has {prep['n_letters']} letters, {n_letters} needed; lower --steps or --batch")
    # the engine's defaults for these (engine.options.groups.FineTuneOptions) are checked in the engine run: they must match
    spec = {**base, "prep": prep}
    runs: dict[str, list[dict]] = {c: [] for c in CONFIGS}
    for r in range(args.rounds):
        order = CONFIGS if r % 2 == 0 else tuple(reversed(CONFIGS))
        for config in order:
            mode = "baseline" if config == "baseline" else "engine"
            res = run_child(mode, spec, workdir, make_env(cache, "float32" if config == "engine_fp32" else None))
            runs[config].append(res)
            print(
                f"  {name:8} round {r + 1}/{args.rounds} {config:12} {res['steps_per_s']:7.3f} steps/s  {res['tokens_per_s']:8.0f} tok/s  "
                f"peak RSS {res['peak_rss_mb']:6.0f} MB  ({res['dtype']}, {res['steps_timed']} timed steps, "
                f"{res['tokens_timed'] / res['steps_timed']:.0f} real / {res['padded_tokens_timed'] / res['steps_timed']:.0f} padded tok/step, "
                f"other CPU {res['other_cpu_s']:.1f} s, {res['wall_s']:.0f} s)",
                flush=True,
            )
    return {"prep": prep, "runs": runs, "steps": steps}


def summarise(name: str, m: dict, args) -> dict:
    runs, prep = m["runs"], m["prep"]

    def clean(c):  # runs that other processes did not disturb (less than 10% of the CPUs' time), if any
        ok = [r for r in runs[c] if r["other_cpu_s"] <= 0.1 * r["threads"] * r["seconds"]]
        return ok or runs[c]

    med = {c: statistics.median(r["steps_per_s"] for r in clean(c)) for c in CONFIGS}
    tok = {c: statistics.median(r["tokens_per_s"] for r in clean(c)) for c in CONFIGS}
    rss = {c: max(r["peak_rss_mb"] for r in runs[c]) for c in CONFIGS}
    hwm = {c: max(r.get("peak_vmhwm_mb") or 0 for r in runs[c]) for c in CONFIGS}

    def per_step(c, key):
        return statistics.mean(r[key] / r["steps_timed"] for r in runs[c])

    def split(c):
        return {k: statistics.median(r["ms_per_step"][k] for r in clean(c)) for k in ("forward", "backward", "optimizer", "other")}

    def mem(c, stage):
        return max(r["memory"][stage]["ru_maxrss_mb"] for r in runs[c])

    eng, bl = runs["engine"][0], runs["baseline"][0]
    row = {
        "model": name,
        "steps_per_s": med["engine"],
        "baseline_steps_per_s": med["baseline"],
        "engine_fp32_steps_per_s": med["engine_fp32"],
        "peak_rss_mb": rss["engine"],
        "baseline_peak_rss_mb": rss["baseline"],
        "engine_fp32_peak_rss_mb": rss["engine_fp32"],
        "speedup": med["engine"] / med["baseline"],
        "speedup_fp32": med["engine_fp32"] / med["baseline"],
        "speedup_per_round": [e["steps_per_s"] / b["steps_per_s"] for e, b in zip(runs["engine"], runs["baseline"])],
        "rss_ratio": rss["engine"] / rss["baseline"],
        "rss_ratio_fp32": rss["engine_fp32"] / rss["baseline"],
        "peak_vmhwm_mb": hwm["engine"],
        "baseline_peak_vmhwm_mb": hwm["baseline"],
        "tokens_per_s": tok["engine"],
        "baseline_tokens_per_s": tok["baseline"],
        "engine_fp32_tokens_per_s": tok["engine_fp32"],
        "tokens_per_step": per_step("engine", "tokens_timed"),
        "baseline_tokens_per_step": per_step("baseline", "tokens_timed"),
        "padded_tokens_per_step": per_step("engine", "padded_tokens_timed"),
        "baseline_padded_tokens_per_step": per_step("baseline", "padded_tokens_timed"),
        "tokens_total": eng["tokens_total"],
        "baseline_tokens_total": bl["tokens_total"],
        "ms_per_step": {c: split(c) for c in CONFIGS},
        "rss_by_stage_mb": {c: {s: mem(c, s) for s in ("imports", "model_loaded", "before_train", "first_step", "end")} for c in CONFIGS},
        "targets_met": {
            "speed": med["engine"] / med["baseline"] >= SPEEDUP_TARGET,
            "memory": rss["engine"] <= RSS_TARGET * rss["baseline"],
        },
        "dtype": eng["dtype"],
        "autocast": eng["autocast"],
        "baseline_optim": bl["optim"],
        "max_length": args.max_length,
        "batch_size": args.batch,
        "warmup_steps_excluded": args.warmup,
        "timed_steps": m["steps"],
        "rounds": args.rounds,
        "letters": prep["n_letters"],
        "n_truncated": prep["n_truncated"],
        "mean_tokens_per_letter": prep["mean_tokens_per_letter"],
        "params": prep["n_params"],
        "trainable_params": eng["trainable_params"],
        "baseline_trainable_params": bl["trainable_params"],
        "lora": {"r": 8, "alpha": 16, "dropout": 0.1, "target_modules": prep["targets"], "modules_to_save": prep["head"]},
        "disturbed_runs_excluded": {c: len(runs[c]) - len(clean(c)) for c in CONFIGS},
        "threads": eng["threads"],
        "other_cpu_s": {c: [round(r["other_cpu_s"], 2) for r in runs[c]] for c in CONFIGS},
        "runs": {
            c: [
                {
                    k: r[k]
                    for k in (
                        "steps_per_s",
                        "tokens_per_s",
                        "seconds",
                        "peak_rss_mb",
                        "peak_vmhwm_mb",
                        "other_cpu_s",
                        "wall_s",
                        "rss_per_step_mb",
                    )
                }
                for r in runs[c]
            ]
            for c in CONFIGS
        },
        "versions": eng["versions"],
    }
    return row


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="max_length 128, 6/3 timed steps, one round (~2-3 min)")
    ap.add_argument("--json", type=Path, help="write the results here")
    ap.add_argument("--models", default="minilm,smollm2")
    ap.add_argument("--max-length", type=int, default=0, help="tokens per letter at most (default: quick 128, full 256)")
    ap.add_argument("--batch", type=int, default=8, help="letters per optimiser step (per-device batch size)")
    ap.add_argument("--steps", type=int, default=0, help="timed optimiser steps (default: full 30 MiniLM / 15 SmolLM2, quick 6 / 3)")
    ap.add_argument("--warmup", type=int, default=2, help="first optimiser steps excluded from the timing")
    ap.add_argument("--rounds", type=int, default=0, help="rounds of (engine, baseline, engine_fp32) per model (default: quick 1, full 2)")
    ap.add_argument("--child", choices=("prep", "engine", "baseline"), help=argparse.SUPPRESS)
    ap.add_argument("--spec", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        return child_main(args.child, args.spec, args.out)
    args.max_length = args.max_length or (128 if args.quick else 256)
    args.rounds = args.rounds or (1 if args.quick else 2)
    if args.warmup < 1:
        ap.error("--warmup must be at least 1 (the timing starts at the end of the last warm-up step)")

    t_start = time.perf_counter()
    print(
        f"ClinBench LoRA training benchmark ({'quick' if args.quick else 'full'}): max_length {args.max_length}, batch {args.batch}, "
        f"{args.warmup} warm-up steps, {args.rounds} round(s), {os.cpu_count()} CPUs",
        flush=True,
    )
    rows = []
    with tempfile.TemporaryDirectory(prefix="clinbench-bench-lora-") as tmp:
        workdir = Path(tmp)
        cache = temp_cache(workdir)
        for name in args.models.split(","):
            rows.append(summarise(name, measure_model(name, args, workdir, cache), args))
        leftover = list((cache / "checkpoints").glob("*.pt")) if (cache / "checkpoints").exists() else []
        assert not leftover, f"checkpoints left behind: {leftover}"

    print(
        f"\nsteps/s and tokens/s: medians over {args.rounds} round(s), runs disturbed by other processes left out where a clean one exists; peak RSS: max (ru_maxrss of each run's own process, model loading included)"
    )
    head = (
        f"{'model':8} {'dtype':8} {'engine':>7} {'base':>7} {'ratio':>6} {'eng fp32':>8} {'ratio':>6} {'eng tok/s':>9} {'base tok/s':>10} "
        f"{'RSS eng':>8} {'RSS base':>8} {'RSS ratio':>9} {'speed>=1.5x':>11} {'RSS<=base':>9}"
    )
    print(head + "\n" + "-" * len(head))
    for r in rows:
        print(
            f"{r['model']:8} {r['dtype']:8} {r['steps_per_s']:7.3f} {r['baseline_steps_per_s']:7.3f} {r['speedup']:6.2f} "
            f"{r['engine_fp32_steps_per_s']:8.3f} {r['speedup_fp32']:6.2f} {r['tokens_per_s']:9.0f} {r['baseline_tokens_per_s']:10.0f} "
            f"{r['peak_rss_mb']:8.0f} {r['baseline_peak_rss_mb']:8.0f} {r['rss_ratio']:9.2f} "
            f"{'met' if r['targets_met']['speed'] else 'MISSED':>11} {'met' if r['targets_met']['memory'] else 'MISSED':>9}"
        )
    print("(steps/s = optimiser steps per second; ratio = engine / baseline; tokens = real, non-padding training tokens)")

    print("\nwork per step (mean over timed steps) and time per step (ms, median over rounds)")
    head = f"{'model':8} {'config':12} {'real tok':>8} {'padded':>7} {'forward':>8} {'backward':>8} {'optim':>7} {'other':>7} {'total':>8}"
    print(head + "\n" + "-" * len(head))
    for r in rows:
        for c in CONFIGS:
            key = {"engine": "", "baseline": "baseline_", "engine_fp32": ""}[c]
            ms = r["ms_per_step"][c]
            print(
                f"{r['model']:8} {c:12} {r[key + 'tokens_per_step']:8.0f} {r[key + 'padded_tokens_per_step']:7.0f} {ms['forward']:8.0f} "
                f"{ms['backward']:8.0f} {ms['optimizer']:7.1f} {ms['other']:7.1f} {sum(ms.values()):8.0f}"
            )
    print("(backward includes the loss and grad clipping; other = batching, scheduler, zero_grad, loop overhead)")

    print("\npeak RSS by stage (MB, ru_maxrss so far)")
    head = f"{'model':8} {'config':12} {'imports':>8} {'model':>8} {'+LoRA':>8} {'step 1':>8} {'end':>8}"
    print(head + "\n" + "-" * len(head))
    for r in rows:
        for c in CONFIGS:
            s = r["rss_by_stage_mb"][c]
            print(
                f"{r['model']:8} {c:12} {s['imports']:8.0f} {s['model_loaded']:8.0f} {s['before_train']:8.0f} {s['first_step']:8.0f} {s['end']:8.0f}"
            )

    threads = rows[0]["threads"] if rows else 0
    busy = [
        (r["model"], c, v)
        for r in rows
        for c in CONFIGS
        for v, run in zip(r["other_cpu_s"][c], r["runs"][c])
        if v > 0.1 * threads * run["seconds"]
    ]
    if busy:
        print("\nwarning: other processes used the CPUs during " + ", ".join(f"{m}/{c} ({v:.1f} CPU s)" for m, c, v in busy))

    out = {
        "mode": "quick" if args.quick else "full",
        "max_length": args.max_length,
        "batch_size": args.batch,
        "warmup_steps": args.warmup,
        "rounds": args.rounds,
        "targets": {"speedup_min": SPEEDUP_TARGET, "rss_ratio_max": RSS_TARGET},
        "baseline": "transformers.Trainer + peft.get_peft_model (same LoraConfig), fp32, DataCollatorWithPadding, use_cpu, "
        "no eval/save/report, dataloader_num_workers=0",
        "models": rows,
        "cpu": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "versions": rows[0]["versions"] if rows else {},
        "seconds_total": time.perf_counter() - t_start,
    }
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(out, indent=2))
        print(f"\nwrote {args.json}")
    print(f"total {out['seconds_total']:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
