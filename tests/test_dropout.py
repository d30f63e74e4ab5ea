"""Cheap dropout masks: same distribution and gradients as dropout, attention equal to SDPA, model restored."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from engine.finetune import dropout as cheap


@pytest.mark.parametrize("p", [0.1, 0.5])
def test_mask_drops_p_of_the_elements_independently(p):
    torch.manual_seed(0)
    keep, p_eff = cheap.keep_mask((1000, 1000), p, "cpu")
    assert abs(p_eff - p) < 1 / 65536
    dropped = 1 - keep.float()
    assert abs(float(dropped.mean()) - p) < 0.002
    # neighbouring lanes come from the same 64-bit draw: they must still be uncorrelated
    flat = dropped.flatten()
    corr = torch.corrcoef(torch.stack([flat[:-1], flat[1:]]))[0, 1]
    assert abs(float(corr)) < 0.005
    assert abs(float(dropped.mean(0).std()) - (p * (1 - p) / 1000) ** 0.5) < 0.003  # per-column rates spread as binomials


def test_dropout_scales_kept_elements_and_passes_gradients_through_the_same_mask():
    torch.manual_seed(0)
    x = torch.randn(64, 300, requires_grad=True)
    y = cheap.apply_dropout(x, 0.2)
    kept = y != 0
    scale = 1 / (1 - round(0.2 * 65536) / 65536)
    assert torch.allclose(y[kept], x.detach()[kept] * scale)
    assert 0.17 < 1 - float(kept.float().mean()) < 0.23
    y.pow(2).sum().backward()
    assert torch.allclose(x.grad, torch.where(kept, 2 * y.detach() * scale, 0.0))
    assert torch.equal(cheap.apply_dropout(x, 0.2, training=False), x)
    assert torch.equal(cheap.apply_dropout(x, 0.0), x)


def test_masks_follow_torch_manual_seed():
    x = torch.ones(1000)
    torch.manual_seed(3)
    a = cheap.apply_dropout(x, 0.3)
    torch.manual_seed(3)
    b = cheap.apply_dropout(x, 0.3)
    assert torch.equal(a, b) and not torch.equal(a, cheap.apply_dropout(x, 0.3))


class _Attn(nn.Module):
    def __init__(self, causal: bool, groups: int = 1):
        super().__init__()
        self.is_causal, self.num_key_value_groups = causal, groups


@pytest.mark.parametrize("causal,groups", [(False, 1), (True, 2)])
def test_attention_without_drops_equals_sdpa(causal, groups):
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    torch.manual_seed(0)
    q = torch.randn(2, 4, 7, 8)
    k, v = torch.randn(2, 4 // groups, 7, 8), torch.randn(2, 4 // groups, 7, 8)
    mask = None if causal else torch.ones(2, 1, 7, 7, dtype=torch.bool)
    if mask is not None:
        mask[1, :, :, 5:] = False  # padding in the second letter
    module = _Attn(causal, groups).train()
    ours, _ = cheap.attention_forward(module, q, k, v, mask, dropout=1e-7)  # rounds to no dropped element: the unfused path
    ref, _ = sdpa_attention_forward(module.eval(), q, k, v, mask, dropout=0.0)
    assert torch.allclose(ours, ref, atol=1e-5)


def test_attention_dropout_keeps_the_expectation():
    torch.manual_seed(0)
    q, k, v = torch.randn(1, 2, 5, 8), torch.randn(1, 2, 5, 8), torch.randn(1, 2, 5, 8)
    module = _Attn(False).train()
    plain, _ = cheap.attention_forward(module, q, k, v, None, dropout=1e-7)
    draws = torch.stack([cheap.attention_forward(module, q, k, v, None, dropout=0.3)[0] for _ in range(3000)])
    assert not torch.allclose(draws[0], plain, atol=1e-3)
    assert torch.allclose(draws.mean(0), plain, atol=0.05)


def _tiny_bert():
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(0)
    cfg = BertConfig(
        vocab_size=50,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=64,
        hidden_dropout_prob=0.1,
        attention_probs_dropout_prob=0.1,
        attn_implementation="sdpa",
    )
    return BertForSequenceClassification(cfg)


def test_context_swaps_dropout_and_attention_and_restores_them():
    net = _tiny_bert()
    n_dropout = sum(type(m) is nn.Dropout for m in net.modules())
    assert n_dropout > 0 and net.config._attn_implementation == "sdpa"
    ids = torch.randint(5, 50, (3, 12))
    with cheap.cheap_dropout(net, "cpu"):
        assert sum(type(m) is nn.Dropout for m in net.modules()) == 0
        assert sum(isinstance(m, cheap.CheapDropout) for m in net.modules()) == n_dropout
        assert net.config._attn_implementation == cheap.ATTENTION_NAME
        net.train()
        net(input_ids=ids).logits.sum().backward()
        net.eval()
        with torch.no_grad():
            inside = net(input_ids=ids).logits
    assert sum(type(m) is nn.Dropout for m in net.modules()) == n_dropout
    assert net.config._attn_implementation == "sdpa"
    with torch.no_grad():
        assert torch.allclose(net(input_ids=ids).logits, inside, atol=1e-6), "in eval the context changes nothing"
    assert "clinbench" not in net.config.to_json_string()


def test_context_restores_the_model_when_training_raises():
    net = _tiny_bert()
    with pytest.raises(RuntimeError), cheap.cheap_dropout(net, "cpu"):
        raise RuntimeError("cancelled")
    assert net.config._attn_implementation == "sdpa" and not any(isinstance(m, cheap.CheapDropout) for m in net.modules())


def test_context_changes_nothing_off_the_cpu():
    net = _tiny_bert()
    with cheap.cheap_dropout(net, "cuda"):
        assert net.config._attn_implementation == "sdpa" and not any(isinstance(m, cheap.CheapDropout) for m in net.modules())
