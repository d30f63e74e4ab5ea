"""ClinBench on a CUDA GPU: what it does there, how fast, in how much memory.

    python bench/gpu.py [--json PATH] [--letters N] [--max-length T] [--big-layers L] [--skip-big]
    python bench/gpu.py --cpu-check      # the same code on the CPU, tiny: proves the path, measures nothing

On the GPU's own placement (bf16 where the GPU has it, engine.models.devices), each row one measurement:

* extract    - letter vectors of the bundled MiniLM and SmolLM2 (`extract.embed`, bf16 weights): tokens/s;
* lora       - one LoRA epoch of each as a sequence classifier, as the `lora` step trains (`load_classifier_model`,
               `prepare_trainable`, `loop.train`: fp32 weights, bf16 autocast): optimiser steps/s and tokens/s;
* zero-shot  - SmolLM2 scoring label words (the `zero-shot` step, hold-out split): seconds per scored letter;
* instruct   - the `instruct-lora` step on SmolLM2 (one epoch, then scoring): train and score seconds;
* big        - a random-initialised LLaMA-shaped model of about 1.1B parameters (TinyLlama's shape, SmolLM2's
               tokenizer; saved once as a local folder, loaded as a user's would be): extraction tokens/s, and a LoRA
               epoch with and without gradient checkpointing (the fine-tuning option): steps/s and peak memory.

Every row records the peak GPU memory torch allocated during it (torch.cuda.max_memory_allocated, reset before
each row). The table is printed and the rows written as JSON (--json) with the device, torch and CUDA versions.
Letters are the bundled default dataset's. Each row runs in this one process, in a cache folder of its own (nothing is
a cache hit). On a machine without CUDA the script prints "no CUDA device" and exits 0.

Not yet measured on a GPU: no GPU was lent to the task that wrote this (see docs/benchmarks.md, "GPU").
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
BIG = {"hidden_size": 2048, "intermediate_size": 5632, "num_attention_heads": 32, "num_key_value_heads": 4}  # TinyLlama 1.1B
TINY = {"hidden_size": 64, "intermediate_size": 128, "num_attention_heads": 4, "num_key_value_heads": 2}


def peak_gib(device: str) -> float | None:
    import torch

    return torch.cuda.max_memory_allocated() / 2**30 if device == "cuda" else None


def row(rows: list[dict], device: str, name: str, model: str, fn) -> dict:
    """Run `fn()` (a dict of figures) as one measured row: seconds and peak memory added; printed as it ends."""
    import torch

    if device == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    figures = fn()
    if device == "cuda":
        torch.cuda.synchronize()
    out = {"row": name, "model": model, "seconds": round(time.perf_counter() - t0, 3), "peak_gpu_gib": peak_gib(device), **figures}
    rows.append(out)
    print(format_row(out), flush=True)
    return out


def format_row(r: dict) -> str:
    def fig(key, fmt):
        return format(r[key], fmt) if r.get(key) is not None else "-"

    return (
        f"{r['row']:22s} {r['model'][:18]:18s} {fig('tokens_per_s', ',.0f'):>12s} {fig('steps_per_s', '.2f'):>8s} "
        f"{fig('s_per_letter', '.3f'):>8s} {fig('peak_gpu_gib', '.2f'):>8s} {r['seconds']:8.1f}"
    )


HEADER = f"{'row':22s} {'model':18s} {'tokens/s':>12s} {'steps/s':>8s} {'s/letter':>8s} {'peak GiB':>8s} {'seconds':>8s}"


def extraction(model, texts: list[str], max_length: int, placement) -> dict:
    from engine.features import extract
    from engine.models import catalog

    loaded = catalog.load(model, placement)
    extract.embed(loaded, texts[:8], max_length=max_length, use_cache=False)  # warm-up: CUDA context, kernels, allocator
    _, stats = extract.embed(loaded, texts, max_length=max_length, use_cache=False)
    return {"tokens_per_s": round(stats.tokens_per_s, 1), "tokens": stats.n_tokens, "dtype": stats.dtype}


def lora_epoch(model, texts: list[str], labels: list[str], max_length: int, placement, checkpointing: bool = False) -> dict:
    """One LoRA epoch of `model` as a sequence classifier, as the lora step trains it; no validation."""
    import numpy as np
    import torch

    from engine.features import extract
    from engine.finetune import loading, loop
    from engine.options.groups import FineTuneOptions

    classes = sorted(set(labels))
    net, tokenizer, _identity, _kind, head = loading.load_classifier_model(model, classes, placement)
    ft = FineTuneOptions(epochs=1, gradient_checkpointing=checkpointing).resolved("lora")
    trained, targets = loading.prepare_trainable(net, "lora", head, ft)
    ids, _ = extract.tokenize(tokenizer, texts, max_length)
    y = torch.tensor([classes.index(v) for v in labels])

    def loss_fn(input_ids, mask, batch):
        logits = trained(input_ids=input_ids, attention_mask=mask).logits.float()
        return torch.nn.functional.cross_entropy(logits, y[batch].to(logits.device))

    key = f"bench-gpu-{os.getpid()}-{time.monotonic_ns()}"
    state = loop.train(
        trained, ids, np.arange(len(texts)), loss_fn, lambda: {"score": 0.0}, ft, 0, placement, pad_id=tokenizer.pad_token_id, key=key
    )
    loop.checkpoint_path(key).unlink(missing_ok=True)
    return {
        "steps_per_s": round(state["steps"] / state["train_s"], 3),
        "tokens_per_s": round(state["tokens"] / state["train_s"], 1),
        "steps": state["steps"],
        "autocast": placement.dtype if placement.dtype == "bfloat16" else None,
        "gradient_checkpointing": checkpointing,
        "lora_targets": targets,
    }


def step(model: str, method: str, dataset, max_length: int) -> dict:
    """One step of a run (hold-out split, one epoch), as `python -m engine evaluate` runs it."""
    from engine import api

    options = {"protocol": "holdout", "max_length": max_length, "epochs": 1, "n_boot": 100}
    spec = api.parse_spec({"models": [model], "methods": [method], "options": options})
    res = api.run_in_process(spec, spec.steps(reference=False)[0], dataset=dataset)
    t = res.manifest.get("timings", {})
    return {
        "s_per_letter": t.get("s_per_letter"),
        "train_s": t.get("train_s"),
        "score_s": t.get("score_s"),
        "macro_f1": round(res.metrics["macro_f1"], 4),
    }


def pick_letters(full, per_class: int, n_classes: int):
    """`per_class` letters of each of the `n_classes` commonest labels of the default dataset, in the dataset's order."""
    from collections import Counter

    from engine.data.dataset import Dataset

    classes = [c for c, _ in Counter(full.labels).most_common(n_classes)]
    taken: Counter = Counter()
    keep = []
    for i, label in enumerate(full.labels):
        if label in classes and taken[label] < per_class:
            taken[label] += 1
            keep.append(i)
    return Dataset([full.texts[i] for i in keep], [full.labels[i] for i in keep], "default letters", "text", "label")


def random_llama(folder: Path, layers: int, shape: dict, dtype) -> Path:
    """A random-initialised LLaMA-shaped model with SmolLM2's tokenizer, saved as a local model folder."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from engine.models import catalog

    tokenizer = AutoTokenizer.from_pretrained(catalog.locate(catalog.resolve("smollm2"))[0])
    config = LlamaConfig(
        vocab_size=len(tokenizer), num_hidden_layers=layers, max_position_embeddings=2048, tie_word_embeddings=True, **shape
    )
    torch.manual_seed(0)
    with torch.device("cuda" if torch.cuda.is_available() else "cpu"):
        net = LlamaForCausalLM(config).to(dtype)
    net.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    del net
    return folder


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--json", type=Path, help="write the rows here")
    ap.add_argument("--letters", type=int, default=200, help="letters of the default dataset per row (default 200)")
    ap.add_argument("--max-length", type=int, default=512)
    ap.add_argument("--big-layers", type=int, default=22, help="layers of the random ~1B model (22: about 1.1B parameters)")
    ap.add_argument("--skip-big", action="store_true", help="leave out the random ~1B model")
    ap.add_argument("--cpu-check", action="store_true", help="every row on the CPU with few letters and a tiny random model")
    args = ap.parse_args(argv)

    import torch

    if not args.cpu_check and not torch.cuda.is_available():
        print("no CUDA device: nothing to measure (bench/gpu.py measures the GPU path; --cpu-check runs its code on the CPU).")
        return 0
    from engine.cache.storage import models_dir

    converted = models_dir()  # (the bundled SmolLM2, converted from GGUF once, is reused)
    os.environ["CLINBENCH_CACHE"] = tempfile.mkdtemp(prefix="clinbench-bench-gpu-")  # no step is a cache hit
    converted.mkdir(parents=True, exist_ok=True)
    (Path(os.environ["CLINBENCH_CACHE"]) / converted.name).symlink_to(converted)
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    from engine.data.dataset import default_dataset
    from engine.models import catalog
    from engine.models.devices import choose

    device = "cpu" if args.cpu_check else "cuda"
    placement = choose(device)
    full = default_dataset()
    if args.cpu_check:
        letters, max_length = pick_letters(full, 5, 2), 64
    else:
        letters, max_length = pick_letters(full, max(5, args.letters // len(full.classes)), len(full.classes)), args.max_length
    texts, labels, n = letters.texts, letters.labels, len(letters)
    rows: list[dict] = []
    info = {
        "device": placement.describe(),
        "placement": {"device": placement.device, "dtype": placement.dtype},
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "letters": n,
        "max_length": max_length,
        "cpu_check": args.cpu_check,
    }
    print(f"{info['device']}; {n} letters, max_length {max_length}\n{HEADER}")
    for model in ("minilm", "smollm2"):
        row(rows, device, "extract", model, lambda m=model: extraction(m, texts, max_length, placement))
    for model in ("minilm", "smollm2"):
        row(rows, device, "lora epoch", model, lambda m=model: lora_epoch(m, texts, labels, max_length, placement))
    row(rows, device, "zero-shot", "smollm2", lambda: step("smollm2", "zero-shot", letters, max_length))
    row(rows, device, "instruct-lora", "smollm2", lambda: step("smollm2", "instruct-lora", letters, max_length))
    if not args.skip_big:
        folder = Path(os.environ["CLINBENCH_CACHE"]) / "random-llama"
        layers, shape = (2, TINY) if args.cpu_check else (args.big_layers, BIG)
        random_llama(folder, layers, shape, placement.torch_dtype)
        n_params = catalog.count_parameters(catalog.load_config(folder))
        info["big_model"] = {"parameters": n_params, "layers": layers, **shape}
        name = f"random {n_params / 1e9:.2f}B"
        row(rows, device, "extract", name, lambda: extraction(str(folder), texts, max_length, placement))
        for checkpointing in (False, True):
            label = "lora epoch" + (" + checkpointing" if checkpointing else "")
            row(rows, device, label, name, lambda c=checkpointing: lora_epoch(str(folder), texts, labels, max_length, placement, c))
    if args.json:
        args.json.write_text(json.dumps({**info, "rows": rows}, indent=1))
        print(f"\nwritten to {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
