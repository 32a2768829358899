"""QKFormer's layers: SEW patch embeddings, token Q-K attention, and SSA's projection neuron
over the flattened T*B axis."""

import pytest
import torch

from spikezoo.layers import SSA, SEWPatchEmbedding, TokenQKAttention


def test_sew_embedding_sums_two_spike_maps_and_halves_per_pool():
    embed = SEWPatchEmbedding(3, widths=(4, 8, 8), pooling=(True, True, False), shortcut_from=1)
    out = embed(torch.randn(2, 3, 3, 16, 16) * 4)
    assert out.shape == (2, 3, 8, 4, 4) and embed.reduction == 4
    assert set(out.unique().tolist()) <= {0.0, 1.0, 2.0}
    # the shortcut reads unit 1's spikes (4 channels at 8x8) and strides over the last pool
    assert embed.shortcut.conv.in_channels == 4 and embed.shortcut.conv.stride == (2, 2)


def test_sew_embedding_from_its_input_strides_over_every_pool():
    embed = SEWPatchEmbedding(16, widths=(32, 32), pooling=(False, True))
    assert embed.shortcut.conv.in_channels == 16 and embed.shortcut.conv.stride == (2, 2)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (dict(widths=(4, 8), pooling=(True,)), "one entry per unit"),
        (dict(widths=(4, 8), pooling=(True, False), shortcut_from=2), "shortcut_from must"),
        (dict(widths=(), pooling=()), "one entry per unit"),
    ],
)
def test_sew_embedding_refuses_inconsistent_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        SEWPatchEmbedding(3, **kwargs)


def test_sew_embedding_names_the_sizes_it_needs():
    embed = SEWPatchEmbedding(3, widths=(4, 4), pooling=(True, True))
    with pytest.raises(ValueError, match="multiples of 4; got 6x8"):
        embed(torch.rand(1, 1, 3, 6, 8))
    with pytest.raises(ValueError, match="expects C=3 channels, got 2"):
        embed(torch.rand(1, 1, 2, 8, 8))


def test_token_attention_mask_is_one_spike_per_head_and_token():
    attn = TokenQKAttention(16, num_heads=4)
    outputs = {}
    attn.mask_lif.register_forward_hook(lambda m, a, out: outputs.update(mask=out))
    x = torch.rand(3, 2, 16, 4, 5) * 2
    assert attn(x).shape == x.shape
    assert outputs["mask"].shape == (3, 2, 4, 1, 20)  # [T, B, heads, 1, N]
    assert attn.read_attention_map(outputs["mask"]).shape == (3, 2, 4, 20)
    assert attn.split_heads("q_lif", torch.zeros(3, 2, 16, 4, 5)).shape == (3, 2, 4, 4, 4, 5)


def test_token_attention_checks_its_arguments_and_input():
    with pytest.raises(ValueError, match="num_heads"):
        TokenQKAttention(10, num_heads=4)
    with pytest.raises(ValueError, match="mask_threshold must be a positive number"):
        TokenQKAttention(8, num_heads=2, mask_threshold=0)
    with pytest.raises(ValueError, match="a time axis T first is missing"):
        TokenQKAttention(8, num_heads=2)(torch.rand(2, 8, 4, 4))


def _ssa_whose_projection_charges(value: float, **kwargs) -> SSA:
    """An SSA (eval, identity BNs) whose projection neuron receives ``value`` everywhere."""
    ssa = SSA(4, num_heads=2, **kwargs).double().eval()
    with torch.no_grad():
        ssa.proj.conv.weight.zero_()
        ssa.proj.conv.bias.fill_(value)
        ssa.proj.bn.eps = 0.0
    return ssa


def test_projection_neuron_over_the_batch_carries_the_membrane_from_sample_to_sample():
    # A constant 1.5 charges a fresh membrane to 0.75 (no spike) and fires the second step
    # (0.75 + (1.5 - 0.75) / 2 = 1.125), then the hard reset starts over.
    x = torch.zeros(2, 3, 4, 2, 2, dtype=torch.float64)  # T=2, B=3
    per_step = _ssa_whose_projection_charges(1.5)(x)
    assert torch.equal(per_step[0], torch.zeros_like(per_step[0]))  # step 0: no sample fires
    assert torch.equal(per_step[1], torch.ones_like(per_step[1]))  # step 1: every sample fires
    # over T*B the sequence is (t0, b0), (t0, b1), (t0, b2), (t1, b0), ...: b1 fires at t0
    # on the membrane b0 left, b2 starts afresh, b0 at t1 fires on b2's membrane, ...
    flattened = _ssa_whose_projection_charges(1.5, proj_neuron_over_batch=True)(x)
    fired = flattened[..., 0, 0, 0]  # [T, B], the same for every channel and token
    assert fired.tolist() == [[0.0, 1.0, 0.0], [1.0, 0.0, 1.0]]
    assert torch.equal(flattened, fired[..., None, None, None].expand_as(flattened))


def test_projection_neuron_over_the_batch_is_the_per_step_one_for_a_single_sample():
    ssa = SSA(8, num_heads=2).double()
    x = torch.rand(3, 1, 8, 4, 4, dtype=torch.float64) * 2
    flattened = SSA(8, num_heads=2, proj_neuron_over_batch=True).double()
    flattened.load_state_dict(ssa.state_dict())
    torch.testing.assert_close(flattened(x), ssa(x), rtol=0, atol=0)


def test_projection_neuron_over_the_batch_needs_the_projection_neuron():
    with pytest.raises(ValueError, match="pre_activation=True leaves out"):
        SSA(8, num_heads=2, pre_activation=True, proj_neuron_over_batch=True)


def test_ssa_keeps_rows_and_columns_of_a_non_square_map():
    # QKFormer's file reshapes the SSA output to (W, H); spikezoo keeps (H, W), so attention
    # commutes with transposing the token grid
    ssa = SSA(8, num_heads=2).double().eval()
    x = (torch.rand(2, 2, 8, 3, 5, dtype=torch.float64) > 0.5).double()
    with torch.no_grad():
        torch.testing.assert_close(ssa(x.transpose(-1, -2)), ssa(x).transpose(-1, -2))
