"""Spiking self-attention (SSA): the formula written out, both product orders, and the spike
operations that ``spikezoo profile`` counts in it."""

import pytest
import torch

from spikezoo.analysis import OpCounter
from spikezoo.layers import SSA

T, B, H, W = 2, 2, 3, 4


def _spiking_input(dim):
    return torch.randn(T, B, dim, H, W, generator=torch.Generator().manual_seed(0)) * 3


def _heads(x, num_heads):
    """``[T, B, C, H, W]`` -> ``[T, B, heads, N, d]`` by plain reshapes (channel c = h*d + j)."""
    t, b, c = x.shape[:3]
    return (
        x.flatten(3).transpose(-1, -2).reshape(t, b, -1, num_heads, c // num_heads).transpose(2, 3)
    )


@pytest.mark.parametrize("pre_activation", [False, True])
def test_ssa_computes_the_papers_formula(pre_activation):
    attn = SSA(16, num_heads=4, pre_activation=pre_activation).double().train()
    x = _spiking_input(16).double()
    out = attn(x)

    s = attn.shortcut_lif(x) if pre_activation else x
    q, k, v = (
        _heads(lif(proj(s)), 4)
        for proj, lif in ((attn.q, attn.q_lif), (attn.k, attn.k_lif), (attn.v, attn.v_lif))
    )
    product = (q @ k.transpose(-2, -1) @ v) * 0.125
    a = attn.attn_lif(product.transpose(-1, -2).reshape(T, B, 16, H, W))
    branch = attn.proj(a) if pre_activation else attn.proj_lif(attn.proj(a))
    torch.testing.assert_close(out, x + branch, rtol=0, atol=0)
    assert attn.attn_lif.v_threshold == 0.5 and attn.q_lif.v_threshold == 1.0
    assert (attn.proj_lif is None) == pre_activation == (attn.shortcut_lif is not None)
    if not pre_activation:  # the branch adds spikes
        assert set((out - x).unique().tolist()) <= {0.0, 1.0}


def test_both_product_orders_give_the_same_numbers():
    first = SSA(16, num_heads=2, kv_first=True).double()
    second = SSA(16, num_heads=2, kv_first=False).double()
    second.load_state_dict(first.state_dict())
    x = _spiking_input(16).double()
    torch.testing.assert_close(first(x), second(x), rtol=0, atol=0)


@pytest.mark.parametrize("kv_first", [True, False])
def test_profile_counts_the_spike_products_by_hand(kv_first):
    attn = SSA(16, num_heads=2, kv_first=kv_first).train()
    with torch.no_grad():  # about half of q, k, v fire: the middle products count above 1
        for projection in (attn.q, attn.k, attn.v):
            projection.bn.bias.fill_(2.0)
    operands = {}
    for name in ("q_lif", "k_lif", "v_lif"):
        getattr(attn, name).register_forward_hook(
            lambda _m, _i, out, name=name: operands.__setitem__(name, _heads(out, 2))
        )
    with OpCounter(attn) as counter, torch.no_grad():
        attn(_spiking_input(16))
    layers = {layer.name: layer for layer in counter.report().layers}
    q, k, v = operands["q_lif"], operands["k_lif"], operands["v_lif"]
    tokens, d = q.shape[-2:]
    if kv_first:  # k^T @ v: one accumulate per coinciding pair; q @ (counts): each q spike x d
        pair, token = int((k.transpose(-2, -1) @ v).sum()), int(q.sum()) * d
    else:  # q @ k^T: coinciding pairs; (counts) @ v: each v spike reaches the N token rows
        pair, token = int((q @ k.transpose(-2, -1)).sum()), int(v.sum()) * tokens
    middle = k.transpose(-2, -1) @ v if kv_first else q @ k.transpose(-2, -1)
    assert pair > 0 and token > 0 and middle.max() > 1  # not spikes: the ones-weight rule
    assert (layers["pair_product"].sops, layers["pair_product"].macs) == (pair, 0)
    assert (layers["token_product"].sops, layers["token_product"].macs) == (token, 0)
