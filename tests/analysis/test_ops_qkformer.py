"""QKFormer's token Q-K attention counted by OpCounter against a hand calculation."""

import torch

from spikezoo.analysis import OpCounter
from spikezoo.layers import TokenQKAttention


def _hand_set_attention() -> TokenQKAttention:
    """dim 4, 2 heads; identity BatchNorms (eval, mean 0, var 1). q's conv is 4 x identity, so
    every channel fires on an all-ones input (v = 4 / 2 > 1); k's is diag(4, 0, 4, 0), so
    channels 0 and 2 fire and 1 and 3 stay silent."""
    attn = TokenQKAttention(dim=4, num_heads=2).double().eval()
    with torch.no_grad():
        attn.q.conv.weight.copy_(4 * torch.eye(4).view(4, 4, 1, 1))
        attn.k.conv.weight.copy_(torch.diag(torch.tensor([4.0, 0, 4, 0])).view(4, 4, 1, 1))
        attn.proj.conv.weight.fill_(1.0)
    return attn


def _counts(counter: OpCounter) -> dict[str, tuple[str, int, int]]:
    """Per layer: (input kind, MACs, SOPs), summed over the calls."""
    return {layer.name: (layer.input, layer.macs, layer.sops) for layer in counter.report().layers}


def test_token_qk_attention_sops_match_a_hand_count():
    attn = _hand_set_attention()
    x = torch.ones(1, 1, 4, 2, 2, dtype=torch.float64)  # T=1, B=1, N=4 tokens: 16 spikes
    with OpCounter(attn) as counter, torch.no_grad():
        attn(x)
    counts = _counts(counter)
    # q, k: 16 input spikes x 4 output channels. q's head sums: 2 heads x 2 channels x 4
    # tokens = 16 spikes summed; each head sums to 2, so the mask neuron (threshold 0.5,
    # v = 2 / 2) lets all 4 tokens of both heads through: mask * k keeps k's 8 spikes
    # (channels 0 and 2); the projection spreads each of them to 4 channels.
    assert counts == {
        "q.conv": ("spikes", 0, 16 * 4),
        "k.conv": ("spikes", 0, 16 * 4),
        "q_sum": ("spikes", 0, 16),
        "token_mask": ("spikes", 0, 8),
        "proj.conv": ("spikes", 0, 8 * 4),
    }


def test_sew_sums_make_the_qk_projections_cost_macs():
    attn = _hand_set_attention()
    x = torch.full((1, 1, 4, 2, 2), 2.0, dtype=torch.float64)  # a SEW sum: two spikes each
    with OpCounter(attn) as counter, torch.no_grad():
        attn(x)
    counts = _counts(counter)
    # 16 outputs x 4 input channels each; the spikes after the neurons are as above
    assert counts["q.conv"] == counts["k.conv"] == ("real", 16 * 4, 0)
    assert counts["token_mask"] == ("spikes", 0, 8)
