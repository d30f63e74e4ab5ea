"""Models for training and their stored adapters.

* `load_classifier_model`: AutoModelForSequenceClassification in fp32 with a new head for the labels
  (the modules the checkpoint does not provide: classifier/score, and BERT's pooler where it has none);
  multi-label: `problem_type` "multi_label_classification" (a sigmoid per label, BCE);
* `load_lm_model`: the same model with its language-model head (masked LM for encoders, causal LM for
  decoders), for domain adaptation;
* `head_modules`: the modules a checkpoint lacks, as peft's `modules_to_save`: a head of several layers (RoBERTa's and
  ELECTRA's classifier.dense + out_proj, DeBERTa's pooler) is named by its top module, so peft wraps it once and its
  saved weights load back;
* `lora_targets`: the modules LoRA adapts. The target_modules option when set (checked against the model); else
  peft's own default for the architecture (TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING: query/value for
  BERT, q_proj/v_proj for LLaMA, c_attn for GPT-2, ...), or ClinBench's for BioGPT (q/k/v, since 0.1); else every
  Linear and Conv1D layer inside the numbered transformer blocks (attention and MLP; never an embedding projection,
  pooler or head), as peft's `all-linear` but without the heads it keeps. GPT-2's Conv1D gets fan_in_fan_out;
* `prepare_trainable`: freeze the pretrained weights; train the head (linear-probe) or LoRA adapters plus the head
  (lora, peft's `modules_to_save`); `lora_manifest` records what an adapter adapted;
* `load_tuned_classifier` / `load_tuned_extractor`: a stored probe or LoRA model rebuilt after its files'
  hashes are checked, as a classifier or (adapter merged) as a feature extractor;
* `load_adapted_extractor`: a model with an adapter trained on its language-model objective, merged, as a feature
  extractor (the adapt-svc step's models).
Training memory is checked up front; a model that cannot load gets a message that says why.
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass
from pathlib import Path

from engine.cache.artifacts import quarantine, read_manifest, verified_file, verify_tree
from engine.cache.storage import sha256_json
from engine.errors import ArtifactError, ClinBenchError
from engine.models import catalog
from engine.models.devices import Placement, choose

MULTI_LABEL = "multi_label_classification"  # transformers' problem_type of a head with one sigmoid per label
# ClinBench's own LoRA default where peft has none: BioGPT (a preset) has had q/k/v since ClinBench 0.1, so its stored
# adapters keep their cache keys. Every other architecture: peft's table, else the linear layers of the blocks.
OWN_TARGETS = {"biogpt": ["q_proj", "k_proj", "v_proj"]}
ALL_LINEAR = "every linear layer of the transformer blocks"
log = logging.getLogger("clinbench.step")


def check_training_memory(name: str, n_params: int, placement) -> None:
    """Training keeps fp32 weights, gradients of the trainable part, optimiser state and activations: refuse up front."""
    catalog.check_fits(f"{name} (training)", n_params, Placement(placement.device, "float32"), per_weight=1.5)


def open_for_training(model: str, placement):
    """(registry entry, folder, identity, config, kind) of a model about to be trained, its training memory checked first."""
    entry = catalog.resolve(model)
    folder, identity = catalog.locate(entry)
    config = catalog.load_config(folder)
    check_training_memory(entry.name, catalog.count_parameters(config), placement)
    return entry, folder, identity, config, catalog.model_kind(config)


def prepare_tokenizer(tokenizer, config) -> None:
    """Decoders often have no pad token: use eos (right padding; the model finds the last real token from the mask)."""
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token or tokenizer.unk_token
    tokenizer.padding_side = "right"
    if getattr(config, "pad_token_id", None) is None:
        config.pad_token_id = tokenizer.pad_token_id


def load_classifier_model(model: str, classes: list[str], placement, multi_label: bool = False):
    """(AutoModelForSequenceClassification in fp32, tokenizer, identity, kind, head module names). `multi_label`: the
    config's problem_type says so (each label's own sigmoid probability, see is_multi_label)."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    entry, folder, identity, config, kind = open_for_training(model, placement)
    try:
        tokenizer = AutoTokenizer.from_pretrained(folder)
        prepare_tokenizer(tokenizer, config)
        config.num_labels = len(classes)
        config.id2label, config.label2id = dict(enumerate(classes)), {c: i for i, c in enumerate(classes)}
        if multi_label:
            config.problem_type = MULTI_LABEL
        elif getattr(config, "problem_type", None) == MULTI_LABEL:  # a checkpoint's own multi-label head: not for one label per letter
            config.problem_type = None
        net, info = AutoModelForSequenceClassification.from_pretrained(
            folder, config=config, dtype=torch.float32, output_loading_info=True, ignore_mismatched_sizes=True
        )
    except (OSError, ValueError) as exc:
        raise ClinBenchError(f"{entry.name} cannot be loaded as a sequence classifier: {str(exc).splitlines()[0][:240]}") from None
    net.config.pad_token_id = tokenizer.pad_token_id
    head = head_modules(net, info)
    return net.to(placement.device), tokenizer, {**identity, "model_type": config.model_type}, kind, head


def is_multi_label(config) -> bool:
    """Whether a classifier's config (or a stored artifact's manifest) is multi-label: one sigmoid per label."""
    if isinstance(config, dict):
        return (config.get("classifier") or {}).get("problem_type") == MULTI_LABEL
    return getattr(config, "problem_type", None) == MULTI_LABEL


def load_lm_model(model: str, placement):
    """(model with its LM head in fp32, tokenizer, identity, kind, config, the modules the checkpoint lacked)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoModelForMaskedLM, AutoTokenizer

    entry, folder, identity, config, kind = open_for_training(model, placement)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    prepare_tokenizer(tokenizer, config)
    if kind == "encoder" and tokenizer.mask_token_id is None:
        raise ClinBenchError(f"{entry.name} has no [MASK] token, so masked-LM adaptation is not possible for it.")
    auto = AutoModelForMaskedLM if kind == "encoder" else AutoModelForCausalLM
    try:
        net, info = auto.from_pretrained(folder, config=config, dtype=torch.float32, output_loading_info=True)
    except (OSError, ValueError) as exc:
        raise ClinBenchError(f"{entry.name} cannot be loaded with a language-model head: {str(exc).splitlines()[0][:240]}") from None
    return net.to(placement.device), tokenizer, identity, kind, config, missing_modules(net, info)


def missing_modules(net, info: dict) -> list[str]:
    """The modules whose weights the checkpoint did not provide, as peft's `modules_to_save` must name them: a module
    outside the backbone by its top module (a head of several layers is wrapped, saved and loaded back as one), one
    inside the backbone (BERT's pooler) by itself; never one nested in another."""
    missing = set(info.get("missing_keys", [])) | {k for k, *_ in info.get("mismatched_keys", [])}
    backbone = getattr(net, "base_model_prefix", "")
    names = set()
    for key in missing:
        owner = key.rsplit(".", 1)[0] if "." in key else key
        top = owner.split(".")[0]
        names.add(owner if top == backbone else top)
    return sorted(n for n in names if not any(n.startswith(m + ".") for m in names))


def head_modules(net, info: dict) -> list[str]:
    """Names of the modules whose weights the checkpoint did not provide: the new classification head."""
    names = missing_modules(net, info)
    if not names:  # a checkpoint that already has a head of the right shape
        names = [n for n, _ in net.named_children() if n in ("classifier", "score")]
    return names


@dataclass(frozen=True)
class LoraTargets:
    """The modules LoRA adapts: what peft's LoraConfig gets (module names, or a regular expression over full module names
    when a name of the blocks' layers is also used outside them) and why they were chosen."""

    modules: list[str] | str
    rule: str


def _adaptable(net) -> list[tuple[str, object]]:
    """(full name, module) of every Linear and Conv1D module (GPT-2's attention and MLP are Conv1D)."""
    import torch
    from transformers.pytorch_utils import Conv1D

    return [(n, m) for n, m in net.named_modules() if isinstance(m, torch.nn.Linear | Conv1D)]


def _matches(name: str, target: str) -> bool:
    """peft's matching of a target name: the full module name, or its last dot-separated parts."""
    return name == target or name.endswith("." + target)


def block_linear_modules(net) -> list[str]:
    """Full names of the Linear and Conv1D modules inside the numbered transformer blocks (`layers.3.`, `h.3.`): the
    attention and MLP projections, never an embedding projection, pooler or head."""
    return [n for n, _ in _adaptable(net) if re.search(r"\.\d+\.", f".{n}")]


def lora_targets(net, requested: list[str] | None = None, model: str = "the model") -> LoraTargets:
    """The LoRA target modules of `net`: `requested` (the target_modules option, checked); else peft's default for its
    architecture (or ClinBench's, OWN_TARGETS) where every name exists; else every linear layer of its blocks."""
    from peft.utils.constants import TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING as PEFT_TARGETS

    if requested:
        check_target_modules(net, requested, model)
        return LoraTargets(list(requested), "the target_modules option")
    model_type = getattr(net.config, "model_type", "")
    names = [n for n, _ in net.named_modules()]
    for table, whose in ((OWN_TARGETS, "ClinBench"), (PEFT_TARGETS, "peft")):
        default = table.get(model_type)
        if default and all(any(_matches(n, t) for n in names) for t in default):
            return LoraTargets(list(default), f"{whose}'s default for {model_type}")
    blocks = block_linear_modules(net)
    if not blocks:
        raise ClinBenchError(
            f"{model} ({model_type}) has no linear layers inside numbered transformer blocks, so there is no default LoRA target. "
            "Set the option target_modules to the names of its attention projections."
        )
    leaves = sorted({n.rsplit(".", 1)[-1] for n in blocks})
    inside = set(blocks)
    if all(n in inside for n in names if any(_matches(n, t) for t in leaves)):
        return LoraTargets(leaves, ALL_LINEAR)
    return LoraTargets(rf".*\.\d+\.(?:.*\.)?(?:{'|'.join(map(re.escape, leaves))})", ALL_LINEAR)


def default_target_modules(net) -> list[str] | str:
    """The LoRA targets of `net` when the target_modules option is unset (`lora_targets`)."""
    return lora_targets(net).modules


def check_target_modules(net, targets: list[str], model: str) -> None:
    """Refuse LoRA target modules that name no Linear, Conv1D or Embedding module of `net` (as peft matches them: the full
    name or its last parts), naming the unknown ones and some the model has, before any training starts."""
    import torch
    from transformers.pytorch_utils import Conv1D

    adaptable = [n for n, m in net.named_modules() if isinstance(m, torch.nn.Linear | torch.nn.Embedding | Conv1D)]
    unknown = [t for t in targets if not any(n == t or n.endswith("." + t) for n in adaptable)]
    if unknown:
        leaves = sorted({n.rsplit(".", 1)[-1] for n, m in net.named_modules() if isinstance(m, torch.nn.Linear | Conv1D)})
        raise ClinBenchError(
            f"LoRA target module(s) {', '.join(map(repr, unknown))} not found in {model}. Its linear modules are named: "
            f"{', '.join(leaves[:10])}. Set target_modules to some of these, or leave it unset for the architecture's default."
        )


def check_targets_of(model: str, targets: list[str]) -> None:
    """`check_target_modules` for a model's architecture built from its config on the meta device (no weights read, ~1 s):
    what `submit` does for a local model folder (or a bundled encoder) before queuing LoRA steps."""
    import torch
    from transformers import AutoModel

    folder, _ = catalog.locate(catalog.resolve(model))
    with torch.device("meta"):
        net = AutoModel.from_config(catalog.load_config(folder))
    check_target_modules(net, targets, model)


def lora_config(net, ft, task: str | None, head: list[str]):
    """peft's LoraConfig from the FineTuneOptions `ft` (targets: `lora_targets`); the new head (if any) is trained in full
    (`modules_to_save`, a copy: peft adds a classifier's own names to the list it is given)."""
    from peft import LoraConfig
    from transformers.pytorch_utils import Conv1D

    name = getattr(net.config, "name_or_path", "") or "the model"
    targets = lora_targets(net, ft.target_modules, name)
    conv1d = any(isinstance(m, Conv1D) and _targeted(n, targets.modules) for n, m in _adaptable(net))
    log.info("LoRA targets of %s (%s): %s", name, targets.rule, targets.modules)
    return LoraConfig(
        task_type=task,
        r=ft.lora_r,
        lora_alpha=ft.lora_alpha,
        lora_dropout=ft.lora_dropout,
        target_modules=targets.modules,
        fan_in_fan_out=conv1d,  # Conv1D stores its weight transposed (GPT-2)
        modules_to_save=list(head) or None,
    )


def _targeted(name: str, modules: list[str] | str) -> bool:
    if isinstance(modules, str):
        return re.fullmatch(modules, name) is not None
    return any(_matches(name, t) for t in modules)


def lora_manifest(tuned) -> dict:
    """What a peft model adapted, for a training manifest: the names of the layers carrying LoRA weights (their last part,
    e.g. query, value), how many there are, and the modules trained in full beside them."""
    from peft.tuners.lora import LoraLayer
    from peft.utils.other import ModulesToSaveWrapper

    adapted = [n for n, m in tuned.named_modules() if isinstance(m, LoraLayer)]
    saved = [n.removeprefix("base_model.model.") for n, m in tuned.named_modules() if isinstance(m, ModulesToSaveWrapper)]
    return {
        "target_modules": sorted({n.rsplit(".", 1)[-1] for n in adapted}),
        "lora_layers": len(adapted),
        "modules_to_save": sorted(saved),
    }


def prepare_trainable(net, method: str, head: list[str], ft):
    """Freeze the pretrained weights; make trainable the head (linear-probe) or LoRA adapters plus the head (lora).
    Returns (the model to train, the names of the layers LoRA adapted, or None)."""
    for p in net.parameters():
        p.requires_grad_(False)
    if method == "linear-probe":
        for name in head:
            for p in net.get_submodule(name).parameters():
                p.requires_grad_(True)
        return net, None
    from peft import get_peft_model

    tuned = get_peft_model(net, lora_config(net, ft, "SEQ_CLS", head))
    return tuned, lora_manifest(tuned)["target_modules"]


def _refuse_nested_heads(artifact: Path, adapter: Path) -> None:
    """An adapter stored by ClinBench <= 0.2 for a head of several layers (RoBERTa's, ELECTRA's) named the head and its
    layers both in modules_to_save, and peft cannot load those weights back: the artifact is moved aside, so that running
    its step again trains a loadable one."""
    names = json.loads((adapter / "adapter_config.json").read_text()).get("modules_to_save") or []
    nested = sorted(n for n in names if any(n.startswith(m + ".") for m in names))
    if nested:
        moved = quarantine(artifact)
        raise ArtifactError(
            f"The LoRA adapter in {artifact.name} was stored by an earlier ClinBench with a classification head it cannot load "
            f"back ({', '.join(nested)}). It was moved aside to {moved.name}; run its lora step again to train one that loads."
        )


def load_tuned_classifier(artifact: str | Path, placement=None, prefix: str = ""):
    """Rebuild a stored linear-probe or LoRA classifier (base model + head or adapter) after checking its files' hashes.
    `prefix` 'folds/r0f2/' picks the model trained on one cross-validation fold. Returns (net in eval mode, tokenizer, manifest)."""
    placement = placement or choose()
    folder = Path(artifact)
    manifest = read_manifest(folder)
    classes = manifest["data"]["classes"]
    net, tokenizer, _identity, _kind, _head = load_classifier_model(manifest["model"]["name"], classes, placement, is_multi_label(manifest))
    if manifest["method"] == "lora":
        from peft import PeftModel

        verify_tree(folder, f"{prefix}adapter/")
        _refuse_nested_heads(folder, folder / prefix / "adapter")
        net = PeftModel.from_pretrained(net, folder / prefix / "adapter")
    else:
        from safetensors.torch import load_file

        net.load_state_dict(load_file(verified_file(folder, f"{prefix}head.safetensors")), strict=False)
    return net.eval(), tokenizer, manifest


def tuned_identity(lora_manifest: dict, prefix: str = "") -> dict:
    """The identity of a LoRA-tuned model: its base's identity plus the adapter (cache keys depend on it)."""
    base = {k: v for k, v in lora_manifest["model"].items() if k not in ("model_type", "kind")}
    return {
        **base,
        "adapter": lora_manifest["key"],
        "adapter_sha256": sha256_json({k: v for k, v in lora_manifest["files"].items() if k.startswith(f"{prefix}adapter/")}),
        **({"fold": prefix.strip("/")} if prefix else {}),
    }


def load_tuned_extractor(lora_artifact: str | Path, placement=None, prefix: str = "") -> catalog.LoadedModel:
    """The LoRA-tuned model (adapter merged; `prefix`: one fold's) as a feature extractor: a LoadedModel whose `model` is the backbone."""
    placement = placement or choose()
    net, tokenizer, manifest = load_tuned_classifier(lora_artifact, placement, prefix)
    merged = net.merge_and_unload()
    kind = manifest["model"]["kind"]
    return catalog.LoadedModel(
        catalog.resolve(manifest["model"]["name"]),
        _backbone_of(merged, placement),
        tokenizer,
        kind,
        {**tuned_identity(manifest, prefix), "model_type": manifest["model"].get("model_type"), "kind": kind},
        placement,
        Path(lora_artifact),
        merged.config,
    )


def _backbone_of(merged, placement):
    """The transformer under a merged model's head, in the placement's dtype, frozen, in eval mode: what embeds letters."""
    backbone = getattr(merged, merged.base_model_prefix).to(placement.torch_dtype).eval()
    for p in backbone.parameters():
        p.requires_grad_(False)
    return backbone


def load_adapted_extractor(model: str, adapter: str | Path, placement, identity: dict) -> catalog.LoadedModel:
    """`model` with the adapter at `adapter` (trained on its language-model objective: LoRA weights, and the modules the
    checkpoint lacked trained in full beside them, peft's modules_to_save) loaded back and merged, as a feature extractor
    whose identity is `identity` (the base's plus the adaptation's key). An adapter of ClinBench <= 0.2 whose
    modules_to_save nest (an LM head and its layers both named) has its LoRA weights read alone, as then: that head is
    the LM head, which embedding letters never uses."""
    from peft import LoraConfig, get_peft_model, set_peft_model_state_dict
    from safetensors.torch import load_file

    net, tokenizer, _identity, kind, config, _head = load_lm_model(model, placement)
    lora = LoraConfig.from_pretrained(str(adapter))
    saved = list(lora.modules_to_save or [])
    legacy = any(n.startswith(m + ".") for n in saved for m in saved)
    if legacy:
        lora.modules_to_save = None
    tuned = get_peft_model(net, lora)
    weights = load_file(Path(adapter) / "adapter_model.safetensors")
    if legacy:
        weights = {k: v for k, v in weights.items() if "lora_" in k}
    result = set_peft_model_state_dict(tuned, weights)
    expected = [k for k in tuned.state_dict() if "lora_" in k or ".modules_to_save." in k]
    absent = [k for k in result.missing_keys if k in expected]
    if result.unexpected_keys or absent:
        raise ClinBenchError(
            f"The adapter at {adapter} does not fit {model}: "
            + (f"unexpected weights {result.unexpected_keys[:3]}" if result.unexpected_keys else f"weights missing {absent[:3]}")
            + "."
        )
    merged = tuned.merge_and_unload()
    return catalog.LoadedModel(
        catalog.resolve(model),
        _backbone_of(merged, placement),
        tokenizer,
        kind,
        {**identity, "kind": kind},
        placement,
        Path(adapter),
        config,
    )
