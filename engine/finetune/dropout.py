"""Dropout with cheap random masks for training on the CPU.

PyTorch's CPU dropout draws one Mersenne-Twister number per element (`bernoulli_`): in a LoRA step of a
small encoder that is about half of the step's time (MiniLM, bf16, batch 8 x 256 tokens). Here each 64-bit
draw of the same generator gives four 16-bit lanes, so a mask costs a quarter of the draws: the same
Bernoulli(p) masks in distribution (p rounded to a multiple of 1/65536), seeded by `torch.manual_seed`.

`cheap_dropout(model)` is a context manager that, for the duration of training only,
* swaps every `nn.Dropout` module (the model's and peft's `lora_dropout`) for `CheapDropout`, and
* where the model uses transformers' "sdpa" attention, routes attention through `attention_forward`: SDPA
  itself when nothing is dropped, else plain attention with the cheap mask on the probabilities (the CPU's
  SDPA falls back to the same unfused path when dropout_p > 0, drawing its mask with `bernoulli_`).
Everything is restored on exit, so a saved config never names this attention. On other devices (CUDA has a
fused dropout) it changes nothing.
"""

from __future__ import annotations

import contextlib

import torch
from torch import nn
from transformers.integrations.sdpa_attention import repeat_kv, sdpa_attention_forward
from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, sdpa_mask
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

ATTENTION_NAME = "clinbench_cheap_dropout"
_LANES = 65536  # 16-bit lanes


def keep_mask(shape, p: float, device) -> tuple[torch.Tensor, float]:
    """A boolean mask, True with probability 1 - p' per element, where p' is p rounded to 1/65536; and p'."""
    n = 1
    for s in shape:
        n *= int(s)
    drop = round(p * _LANES)
    words = torch.randint(-(2**63), 2**63 - 1, ((n + 3) // 4,), dtype=torch.int64, device=device)
    lanes = words.view(torch.int16)[:n].view(shape)
    return lanes >= (drop - _LANES // 2), drop / _LANES


class _Dropout(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, p: float):
        keep, p_eff = keep_mask(x.shape, p, x.device)
        scale = 1.0 / (1.0 - p_eff)
        ctx.save_for_backward(keep)
        ctx.scale = scale
        return torch.where(keep, x * scale, 0)

    @staticmethod
    def backward(ctx, grad):
        (keep,) = ctx.saved_tensors
        return torch.where(keep, grad * ctx.scale, 0), None


def apply_dropout(x: torch.Tensor, p: float, training: bool = True) -> torch.Tensor:
    """`F.dropout` with cheap masks on the CPU; F.dropout itself elsewhere, at p = 0, at p >= 1 and in eval."""
    if not training or p <= 0.0:
        return x
    if x.device.type != "cpu" or p >= 1.0:
        return nn.functional.dropout(x, p, training)
    return _Dropout.apply(x, p)


class CheapDropout(nn.Dropout):
    """nn.Dropout (same `p`, same eval behaviour) drawing its mask with `keep_mask`."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return apply_dropout(x, self.p, self.training)


def attention_forward(module, query, key, value, attention_mask, dropout: float = 0.0, scaling=None, is_causal=None, **kwargs):
    """transformers' SDPA attention, except on the CPU in training with dropout > 0: softmax(QK^T s + mask) V with
    the cheap mask on the probabilities. Masked positions get the dtype's minimum, not -inf, so a fully masked
    (padding) row gives a finite output, as SDPA's does."""
    if (
        not (module.training and dropout > 0.0 and query.device.type == "cpu")
        or kwargs.get("position_bias") is not None
        or kwargs.get("cache") is not None
        or kwargs.get("softcap") is not None
    ):
        return sdpa_attention_forward(
            module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, is_causal=is_causal, **kwargs
        )
    groups = getattr(module, "num_key_value_groups", 1)
    if groups > 1:
        key, value = repeat_kv(key, groups), repeat_kv(value, groups)
    scale = scaling if scaling is not None else query.shape[-1] ** -0.5
    scores = torch.matmul(query, key.transpose(-1, -2)) * scale
    q_len, k_len = query.shape[2], key.shape[2]
    is_causal = is_causal if is_causal is not None else getattr(module, "is_causal", True)
    if attention_mask is None and is_causal and q_len > 1:
        attention_mask = torch.ones(q_len, k_len, dtype=torch.bool, device=query.device).tril(k_len - q_len)
    if attention_mask is not None:
        if attention_mask.dtype == torch.bool:
            scores = scores.masked_fill(~attention_mask, torch.finfo(scores.dtype).min)
        else:
            scores = scores + attention_mask
    with torch.autocast("cpu", enabled=False):  # autocast would run softmax in fp32 and copy twice; the CPU kernel
        probs = torch.softmax(scores, dim=-1)  # accumulates in fp32 for bf16 input anyway
    out = torch.matmul(apply_dropout(probs, dropout), value)
    return out.transpose(1, 2).contiguous(), None


def _register() -> None:
    if ATTENTION_NAME not in ALL_ATTENTION_FUNCTIONS:
        ALL_ATTENTION_FUNCTIONS.register(ATTENTION_NAME, attention_forward)
        ALL_MASK_ATTENTION_FUNCTIONS.register(ATTENTION_NAME, sdpa_mask)


def _configs(model: nn.Module) -> list:
    """Every transformers config object among the model's modules (one, usually; peft wrappers share it)."""
    seen: dict[int, object] = {}
    for module in model.modules():
        cfg = getattr(module, "config", None)
        if cfg is not None and hasattr(cfg, "_attn_implementation") and not isinstance(cfg, dict):
            seen.setdefault(id(cfg), cfg)
    return list(seen.values())


@contextlib.contextmanager
def cheap_dropout(model: nn.Module, device: str = "cpu"):
    """Within the block, `model` draws its dropout masks cheaply (see the module docstring); restored on exit."""
    if device != "cpu":
        yield model
        return
    swapped: list[tuple[nn.Module, str, nn.Module]] = []
    rerouted: list = []  # configs whose "sdpa" attention goes through attention_forward
    try:
        for parent in list(model.modules()):
            for name, child in list(parent.named_children()):
                if type(child) is nn.Dropout and child.p > 0:
                    cheap = CheapDropout(child.p)
                    cheap.train(child.training)
                    setattr(parent, name, cheap)
                    swapped.append((parent, name, child))
        for cfg in _configs(model):
            if cfg._attn_implementation == "sdpa":
                _register()
                cfg._attn_implementation = ATTENTION_NAME
                rerouted.append(cfg)
        yield model
    finally:
        for parent, name, child in swapped:
            child.train(getattr(parent, name).training)  # the model may have switched train/eval inside the block
            setattr(parent, name, child)
        for cfg in rerouted:
            cfg._attn_implementation = "sdpa"
