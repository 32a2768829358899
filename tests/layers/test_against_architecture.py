"""Layer-level agreement with shared/reference/ARCHITECTURE.md.

Each reference below follows the document (and the authors' reshapes) literally, with plain
torch operations instead of spikezoo's einops code, and reuses the layer's own weights.
"""

import pytest
import torch
import torch.nn.functional as F

from spikezoo.layers import DSSA, GWSFFN, SDSA, SPS, SpikingMLP, dilate
from spikezoo.neurons import multistep_lif


def lif(x, v_threshold=1.0, surrogate="sigmoid"):
    return multistep_lif(x, v_threshold=v_threshold, surrogate=surrogate, backend="torch")


def conv_bn(block, x):
    """``BN(conv(x))`` per step, evaluated with the layer's eval-mode statistics."""
    T, B = x.shape[:2]
    conv, bn = block.conv, block.bn
    y = F.conv2d(
        x.reshape(T * B, *x.shape[2:]),
        conv.weight,
        conv.bias,
        conv.stride,
        conv.padding,
        groups=conv.groups,
    )
    y = F.batch_norm(y, bn.running_mean, bn.running_var, bn.weight, bn.bias, False, 0.0, bn.eps)
    return y.reshape(T, B, *y.shape[1:])


def randomise(layer):
    """Non-trivial BN statistics and affine parameters, so that every path matters."""
    with torch.no_grad():
        for m in layer.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.normal_(0, 0.2)
                m.running_var.uniform_(0.5, 1.5)
                m.weight.uniform_(0.5, 2.0)
                m.bias.normal_(0, 0.5)
    return layer.double().eval()


def authors_erode(x):
    return torch.nn.MaxPool3d((1, 3, 3), stride=1, padding=(0, 1, 1))(x)


@pytest.mark.parametrize("dvs", [False, True])
def test_sdsa(dvs):
    layer = randomise(SDSA(16, num_heads=4, dvs=dvs))
    x = torch.randn(3, 2, 16, 4, 5, dtype=torch.float64) * 2
    T, B, D, H, W = x.shape
    N, heads = H * W, 4

    s = lif(x)
    q = lif(conv_bn(layer.q, s))
    k = lif(conv_bn(layer.k, s))
    v = lif(conv_bn(layer.v, s))
    if dvs:
        k, v = authors_erode(k), authors_erode(v)

    def split(t):  # the authors' layout: [T, B, heads, N, d], head = channel // d
        return (
            t.flatten(3)
            .transpose(-1, -2)
            .reshape(T, B, N, heads, D // heads)
            .permute(0, 1, 3, 2, 4)
        )

    q, k, v = split(q), split(k), split(v)
    kv = k * v
    if dvs:
        kv = authors_erode(kv)
    kv = lif(kv.sum(dim=-2, keepdim=True), v_threshold=0.5)
    out = q * kv
    if dvs:
        out = authors_erode(out)
    out = out.transpose(3, 4).reshape(T, B, D, N).reshape(T, B, D, H, W)
    expected = conv_bn(layer.proj, out) + x

    torch.testing.assert_close(layer(x), expected, rtol=0, atol=1e-12)


def test_dilate_is_the_authors_maxpool3d_erode_on_both_layouts():
    x = torch.randn(2, 3, 4, 5, 6)
    torch.testing.assert_close(dilate(x), authors_erode(x), rtol=0, atol=0)
    assert torch.equal(
        dilate(torch.eye(5).view(1, 1, 1, 5, 5))[0, 0, 0, 0], torch.tensor([1.0, 1, 1, 0, 0])
    )


@pytest.mark.parametrize("hidden", [64, 16])
def test_spiking_mlp(hidden):
    layer = randomise(SpikingMLP(16, hidden))
    x = torch.randn(2, 2, 16, 3, 3, dtype=torch.float64) * 2
    identity = x
    h = conv_bn(layer.fc1, lif(x))
    if hidden == 16:
        h = h + identity
        identity = h
    expected = conv_bn(layer.fc2, lif(h)) + identity
    torch.testing.assert_close(layer(x), expected, rtol=0, atol=1e-12)


def test_sps():
    layer = randomise(SPS(3, 32, "1010"))
    x = torch.randn(2, 2, 3, 8, 8, dtype=torch.float64) * 2

    def pool(t):
        T, B = t.shape[:2]
        y = F.max_pool2d(t.flatten(0, 1), 3, 2, 1)
        return y.reshape(T, B, *y.shape[1:])

    y = pool(lif(conv_bn(layer.proj[0], x)))
    y = lif(conv_bn(layer.proj[1], y))
    y = pool(lif(conv_bn(layer.proj[2], y)))
    feat = conv_bn(layer.proj[3], y)
    expected = feat + conv_bn(layer.rpe, lif(feat))
    torch.testing.assert_close(layer(x), expected, rtol=0, atol=1e-12)


def test_gwsffn():
    layer = randomise(GWSFFN(16, group_size=16))
    x = torch.randn(2, 2, 16, 3, 3, dtype=torch.float64) * 2
    atan_lif = lambda t: lif(t, surrogate="atan")  # noqa: E731
    u = conv_bn(layer.up, atan_lif(x))
    z = conv_bn(layer.convs[0], atan_lif(u)) + u
    expected = conv_bn(layer.down, atan_lif(z)) + x
    assert layer.convs[0].conv.groups == 64 // 16
    torch.testing.assert_close(layer(x), expected, rtol=0, atol=1e-12)


@pytest.mark.parametrize("patch", [1, 2])
def test_dssa_eval(patch):
    layer = randomise(DSSA(16, num_heads=2, patch_size=patch))
    with torch.no_grad():
        layer.firing_rate_x.copy_(torch.tensor([0.2, 0.3]).view(1, 1, 2, 1, 1))
        layer.firing_rate_attn.copy_(torch.tensor([0.1, 0.4]).view(1, 1, 2, 1, 1))
    x = torch.randn(2, 2, 16, 4, 6, dtype=torch.float64) * 2
    T, B, C, H, W = x.shape
    heads, d, M = 2, 8, (H // patch) * (W // patch)
    atan_lif = lambda t: lif(t, surrogate="atan")  # noqa: E731

    s = atan_lif(x)
    y = conv_bn(layer.patch_proj, s).reshape(T, B, heads, 2 * C // heads, -1)
    y1, y2 = y[:, :, :, :d, :], y[:, :, :, d:, :]
    s = s.reshape(T, B, heads, d, -1)
    attn = atan_lif((y1.transpose(-1, -2) @ s) * (1.0 / torch.sqrt(layer.firing_rate_x * d)))
    out = (y2 @ attn) * (1.0 / torch.sqrt(layer.firing_rate_attn * M))
    expected = conv_bn(layer.proj, atan_lif(out.reshape(T, B, C, H, W))) + x
    torch.testing.assert_close(layer(x), expected, rtol=0, atol=1e-12)
