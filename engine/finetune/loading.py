"""Models for training and their stored adapters.

* `load_classifier_model`: AutoModelForSequenceClassification in fp32 with a new head for the labels
  (the modules the checkpoint does not provide: classifier/score, and BERT's pooler where it has none);
  multi-label: `problem_type` "multi_label_classification" (a sigmoid per label, BCE);
* `load_lm_model`: the same model with its language-model head (masked LM for encoders, causal LM for
  decoders), for domain adaptation;
* `prepare_trainable`: freeze the pretrained weights; train the head (linear-probe) or LoRA adapters on
  the attention projections plus the head (lora, peft's `modules_to_save`);
* `load_tuned_classifier` / `load_tuned_extractor`: a stored probe or LoRA model rebuilt after its files'
  hashes are checked, as a classifier or (adapter merged) as a feature extractor;
* `load_adapted_extractor`: a model with an adapter trained on its language-model objective, merged, as a feature
  extractor (the adapt-svc step's models).
Training memory is checked up front; a model that cannot load gets a message that says why.
"""

from __future__ import annotations

from pathlib import Path

from engine.cache.artifacts import read_manifest, verified_file, verify_tree
from engine.cache.storage import sha256_json
from engine.errors import ClinBenchError
from engine.models import catalog
from engine.models.devices import Placement, choose

MULTI_LABEL = "multi_label_classification"  # transformers' problem_type of a head with one sigmoid per label


def check_training_memory(name: str, n_params: int, placement) -> None:
    """Training keeps fp32 weights, gradients of the trainable part, optimiser state and activations: refuse up front."""
    catalog.check_fits(f"{name} (training)", int(n_params * 1.5), Placement(placement.device, "float32"))


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
    head = sorted({k.rsplit(".", 1)[0] for k in info.get("missing_keys", [])})
    return net.to(placement.device), tokenizer, identity, kind, config, head


def head_modules(net, info: dict) -> list[str]:
    """Names of the modules whose weights the checkpoint did not provide: the new classification head."""
    missing = set(info.get("missing_keys", [])) | {k for k, *_ in info.get("mismatched_keys", [])}
    names = sorted({k.rsplit(".", 1)[0] for k in missing})
    if not names:  # a checkpoint that already has a head of the right shape
        names = [n for n, _ in net.named_children() if n in ("classifier", "score")]
    return names


def default_target_modules(net) -> list[str]:
    """LoRA targets by architecture: query/value (BERT family), q/k/v (BioGPT), q/v (LLaMA family), c_attn (GPT-2)."""
    import torch

    leaves = {n.rsplit(".", 1)[-1] for n, m in net.named_modules() if isinstance(m, torch.nn.Linear)}
    model_type = getattr(net.config, "model_type", "")
    if {"query", "value"} <= leaves:
        return ["query", "value"]
    if model_type == "biogpt" and {"q_proj", "k_proj", "v_proj"} <= leaves:
        return ["q_proj", "k_proj", "v_proj"]
    if {"q_proj", "v_proj"} <= leaves:
        return ["q_proj", "v_proj"]
    if "c_attn" in leaves:
        return ["c_attn"]
    raise ClinBenchError(
        f"No default LoRA target modules for model type {model_type!r}. Set the option target_modules to the names "
        f"of its attention projections, e.g. one of: {', '.join(sorted(leaves)[:12])}."
    )


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
    """peft's LoraConfig from the FineTuneOptions `ft`; the new head (if any) is trained in full (`modules_to_save`)."""
    from peft import LoraConfig

    if ft.target_modules:
        check_target_modules(net, ft.target_modules, getattr(net.config, "name_or_path", "") or "the model")
    return LoraConfig(
        task_type=task,
        r=ft.lora_r,
        lora_alpha=ft.lora_alpha,
        lora_dropout=ft.lora_dropout,
        target_modules=ft.target_modules or default_target_modules(net),
        modules_to_save=head or None,
    )


def prepare_trainable(net, method: str, head: list[str], ft):
    """Freeze the pretrained weights; make trainable the head (linear-probe) or LoRA adapters plus the head (lora).
    Returns (the model to train, the LoRA target modules or None)."""
    for p in net.parameters():
        p.requires_grad_(False)
    if method == "linear-probe":
        for name in head:
            for p in net.get_submodule(name).parameters():
                p.requires_grad_(True)
        return net, None
    from peft import get_peft_model

    targets = ft.target_modules or default_target_modules(net)
    config = lora_config(net, ft, "SEQ_CLS", head)
    config.target_modules = targets
    return get_peft_model(net, config), targets


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
    """`model` with the LoRA weights of the adapter at `adapter` (trained on its language-model objective) merged, as a
    feature extractor whose identity is `identity` (the base's plus the adaptation's key). Only the LoRA weights are read:
    an LM head the checkpoint lacked was trained in full beside them (peft's modules_to_save, tied to the embeddings in
    BERT), and embedding letters never uses it."""
    from peft import LoraConfig, get_peft_model, set_peft_model_state_dict
    from safetensors.torch import load_file

    net, tokenizer, _identity, kind, config, _head = load_lm_model(model, placement)
    lora = LoraConfig.from_pretrained(str(adapter))
    lora.modules_to_save = None
    tuned = get_peft_model(net, lora)
    weights = {k: v for k, v in load_file(Path(adapter) / "adapter_model.safetensors").items() if "lora_" in k}
    result = set_peft_model_state_dict(tuned, weights)
    if result.unexpected_keys:
        raise ClinBenchError(f"The adapter at {adapter} does not fit {model}: unexpected weights {result.unexpected_keys[:3]}.")
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
