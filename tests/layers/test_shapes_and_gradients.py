"""Every layer: shapes (odd sizes, T=1), gradients reaching every parameter, bad input."""

import functools

import pytest
import torch
import torch.nn.functional as F

from spikezoo.layers import (
    DSSA,
    GWSFFN,
    SDSA,
    SPS,
    SSA,
    BNAndPad,
    ConvBN,
    Downsample,
    DropPath,
    LinearSpikingAttention,
    RepConv,
    SepConv,
    SpikingConvBlock,
    SpikingMLP,
    SpikingTokenMLP,
)
from spikezoo.neurons import MultiStepLIF, MultiStepPLIF

# (layer factory, input shape, output shape)
LAYERS = {
    "sps": (lambda: SPS(3, 32, "0101"), (1, 2, 3, 12, 20), (1, 2, 32, 3, 5)),
    "sps_no_pool": (lambda: SPS(2, 16, "0000"), (2, 1, 2, 5, 7), (2, 1, 16, 5, 7)),
    "sps_spike_rpe": (lambda: SPS(3, 16, "0011", rpe="spikes"), (2, 2, 3, 8, 4), (2, 2, 16, 2, 1)),
    "sps_plain": (lambda: SPS(3, 16, "0110", rpe="plain"), (2, 2, 3, 8, 12), (2, 2, 16, 2, 3)),
    "ssa": (lambda: SSA(16, 4), (1, 2, 16, 5, 7), (1, 2, 16, 5, 7)),
    "ssa_pre_activation": (
        lambda: SSA(16, 2, kv_first=False, pre_activation=True, qkv_bias=True),
        (3, 2, 16, 5, 7),
        (3, 2, 16, 5, 7),
    ),
    "sdsa": (lambda: SDSA(16, 4), (1, 2, 16, 5, 7), (1, 2, 16, 5, 7)),
    "sdsa_dvs": (lambda: SDSA(16, 2, dvs=True), (3, 2, 16, 5, 7), (3, 2, 16, 5, 7)),
    "mlp": (lambda: SpikingMLP(16, 64), (1, 2, 16, 5, 7), (1, 2, 16, 5, 7)),
    "mlp_same_width": (lambda: SpikingMLP(16, 16), (2, 2, 16, 3, 3), (2, 2, 16, 3, 3)),
    "mlp_post_activation": (
        lambda: SpikingMLP(16, 16, pre_activation=False, inner_shortcut=False),
        (2, 2, 16, 3, 3),
        (2, 2, 16, 3, 3),
    ),
    "dssa": (lambda: DSSA(16, 2, patch_size=1), (1, 2, 16, 5, 7), (1, 2, 16, 5, 7)),
    "dssa_patch": (lambda: DSSA(16, 1, patch_size=3), (2, 2, 16, 6, 9), (2, 2, 16, 6, 9)),
    "gwsffn": (lambda: GWSFFN(16, group_size=16, num_conv=2), (1, 2, 16, 5, 7), (1, 2, 16, 5, 7)),
    "downsample": (lambda: Downsample(16, 32), (2, 2, 16, 5, 7), (2, 2, 32, 3, 4)),
    "sep_conv": (lambda: SepConv(8), (1, 2, 8, 5, 7), (1, 2, 8, 5, 7)),
    "conv_block": (lambda: SpikingConvBlock(8), (2, 2, 8, 5, 7), (2, 2, 8, 5, 7)),
    "linear_attention": (lambda: LinearSpikingAttention(16, 4), (1, 2, 16, 5, 7), (1, 2, 16, 5, 7)),
    "token_mlp": (lambda: SpikingTokenMLP(16, 32), (2, 2, 16, 5, 7), (2, 2, 16, 5, 7)),
    "rep_conv": (lambda: RepConv(8, 16), (2, 8, 5, 7), (2, 16, 5, 7)),
}


@pytest.mark.parametrize("name", LAYERS)
def test_shape_and_every_parameter_gets_a_gradient(name):
    make, in_shape, out_shape = LAYERS[name]
    layer = make().train()
    x = (torch.randn(in_shape) * 3).requires_grad_()
    y = layer(x)
    assert y.shape == out_shape
    y.square().sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    for param_name, param in layer.named_parameters():
        assert param.grad is not None, param_name


@pytest.mark.parametrize("name", ["sdsa", "dssa", "gwsffn", "mlp", "ssa"])
def test_a_custom_neuron_factory_is_used_everywhere(name):
    make, in_shape, _ = LAYERS[name]
    plif = functools.partial(MultiStepPLIF, surrogate="atan", init_tau=3.0)
    layer = type(make())(**_args(name), neuron=plif)
    neurons = [m for m in layer.modules() if isinstance(m, MultiStepLIF | MultiStepPLIF)]
    assert neurons and all(isinstance(m, MultiStepPLIF) for m in neurons)
    layer(torch.randn(in_shape)).sum().backward()
    assert all(m.w.grad is not None for m in neurons)


def _args(name):
    return {
        "sdsa": dict(dim=16, num_heads=4),
        "dssa": dict(dim=16, num_heads=2),
        "gwsffn": dict(dim=16, group_size=16),
        "mlp": dict(dim=16, hidden_dim=64),
        "ssa": dict(dim=16, num_heads=4),
    }[name]


def test_sdsa_key_value_neuron_fires_at_half():
    attn = SDSA(16, 4)
    assert attn.kv_lif.v_threshold == 0.5
    assert all(m.v_threshold == 1.0 for m in (attn.q_lif, attn.k_lif, attn.v_lif))
    assert SDSA(16, 4, kv_threshold=0.25).kv_lif.v_threshold == 0.25


@pytest.mark.parametrize(
    ("make", "shape", "message"),
    [
        (
            lambda: SDSA(16, 4),
            (2, 16, 4, 4),
            r"expects input \[T, B, C, H, W\], got shape \(2, 16, 4, 4\)",
        ),
        (lambda: SDSA(16, 4), (1, 2, 8, 4, 4), "expects C=16 channels, got 8"),
        (lambda: SSA(16, 4), (2, 16, 4, 4), r"SSA expects input \[T, B, C, H, W\], got shape"),
        (lambda: SSA(16, 4), (1, 2, 8, 4, 4), "SSA expects C=16 channels, got 8"),
        (
            lambda: DSSA(16, 2, patch_size=4),
            (1, 2, 16, 6, 8),
            "patch_size 4 must divide H and W; got 6x8",
        ),
        (lambda: SPS(3, 16, "1100"), (1, 2, 3, 6, 8), "H and W must be multiples of 4; got 6x8"),
        (lambda: GWSFFN(16, group_size=16), (1, 2, 3, 4, 4), "expects C=16 channels, got 3"),
        (lambda: SpikingMLP(16), (1, 2, 16, 4), r"expects input \[T, B, C, H, W\]"),
        (
            lambda: ConvBN(16, 32),
            (2, 16, 4, 4),
            r"ConvBN expects input \[T, B, C, H, W\], got shape \(2, 16, 4, 4\) "
            r"\(a time axis T first is missing\)",
        ),
        (
            lambda: Downsample(16, 32),
            (2, 16, 4, 4),
            r"Downsample expects input \[T, B, C, H, W\], got shape \(2, 16, 4, 4\)",
        ),
        (lambda: Downsample(16, 32), (1, 2, 8, 4, 4), "Downsample expects C=16 channels, got 8"),
    ],
)
def test_bad_input_names_the_numbers(make, shape, message):
    with pytest.raises(ValueError, match=message):
        make()(torch.randn(shape))


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: SDSA(30, 4), r"dim \(30\) must be divisible by num_heads \(4\)"),
        (lambda: DSSA(30, 4), r"dim \(30\) must be divisible by num_heads \(4\)"),
        (lambda: GWSFFN(24, group_size=64), r"group_size \(64\) must divide .* = 24\*4 = 96"),
        (lambda: SPS(3, 20), "embed_dim must be a multiple of 8, got 20"),
        (
            lambda: SPS(3, 16, rpe="spike"),
            r"rpe must be one of \['membrane', 'spikes', 'plain'\], got 'spike'",
        ),
        (lambda: SSA(30, 4), r"dim \(30\) must be divisible by num_heads \(4\)"),
        (lambda: SSA(16, 4, scale=0), "scale must be a positive number, got 0"),
        (lambda: SPS(3, 16, "011"), "pooling_stat must be four '0'/'1' characters, got '011'"),
        (lambda: SPS(3, 16, [True, False]), "pooling_stat must have four flags, got 2"),
        (
            lambda: SPS(3, 16, ["0", "0", "1", "1"]),
            r"pooling_stat flags must be booleans \(or 0/1\), got \['0', '0', '1', '1'\]; "
            "as text, write one string such as '0011'",
        ),
        (lambda: SPS(0, 16), "in_chans must be an integer >= 1, got 0"),
        (lambda: DSSA(16, momentum=1.5), r"momentum must be a number in \[0, 1\], got 1.5"),
        (lambda: DSSA(16, momentum=-0.1), r"momentum must be a number in \[0, 1\], got -0.1"),
        (lambda: DSSA(16, momentum=float("nan")), r"momentum must be .*, got nan"),
        (lambda: DSSA(16, momentum="0.9"), r"momentum must be .*, got '0.9'"),
        (lambda: DSSA(16, num_heads=0), "num_heads must be an integer >= 1, got 0"),
        (lambda: DSSA(16, patch_size=0), "patch_size must be an integer >= 1, got 0"),
        (lambda: DSSA(16, patch_size=2.0), "patch_size must be an integer >= 1, got 2.0"),
        (lambda: SDSA(16, num_heads=0), "num_heads must be an integer >= 1, got 0"),
        (lambda: GWSFFN(16, group_size=0), "group_size must be an integer >= 1, got 0"),
        (lambda: GWSFFN(16, ratio=0), "ratio must be an integer >= 1, got 0"),
        (lambda: SpikingMLP(16, hidden_dim=0), "hidden_dim must be an integer >= 1, got 0"),
        (lambda: ConvBN(16, 0), "out_chans must be an integer >= 1, got 0"),
        (lambda: ConvBN(16, 8, kernel_size=0), "kernel_size must be an integer >= 1, got 0"),
        (lambda: ConvBN(16, 8, padding=-1), "padding must be an integer >= 0, got -1"),
        (lambda: DropPath(1.0), r"drop_prob must be a number in \[0, 1\), got 1.0"),
    ],
)
def test_bad_configuration_names_the_numbers(make, message):
    with pytest.raises(ValueError, match=message):
        make()


def test_sps_accepts_boolean_pooling_flags():
    as_text = SPS(3, 16, "0011")
    as_flags = SPS(3, 16, (False, False, True, True))
    assert as_text.pooling == as_flags.pooling and as_text.reduction == 4


def test_bn_and_pad_fills_the_border_with_the_bn_of_zero_from_running_statistics():
    layer = BNAndPad(3)
    with torch.no_grad():
        for tensor in (layer.bn.weight, layer.bn.bias, layer.bn.running_mean):
            tensor.uniform_(-2.0, 2.0)
        layer.bn.running_var.uniform_(0.5, 2.0)
    x = torch.randn(2, 3, 4, 5, dtype=torch.float64, requires_grad=True)
    layer.double().train()
    y = layer(x)
    assert y.shape == (2, 3, 6, 7)
    bn = layer.bn
    interior = F.batch_norm(x, None, None, bn.weight, bn.bias, training=True, eps=bn.eps)
    torch.testing.assert_close(y[:, :, 1:-1, 1:-1], interior)
    # the statistics this call updated, not the batch's
    zero = bn.bias - bn.running_mean * bn.weight / torch.sqrt(bn.running_var + bn.eps)
    border = torch.ones(6, 7, dtype=torch.bool)
    border[1:-1, 1:-1] = False
    torch.testing.assert_close(y[:, :, border], zero.detach()[None, :, None].expand(2, 3, 22))
    y.square().sum().backward()  # the border passes no gradient to the BN's parameters
    weight_grad = bn.weight.grad.clone()
    bn.weight.grad = None
    interior.square().sum().backward()
    torch.testing.assert_close(weight_grad, bn.weight.grad)

    layer.eval()
    with torch.no_grad():
        torch.testing.assert_close(layer(x), bn(F.pad(x, [1, 1, 1, 1])))
