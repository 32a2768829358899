"""``convolve``: a large depthwise convolution runs channels-last in a CPU training forward,
with the NCHW call's output and gradients; everything else runs as it is called.

Spikes, small integer weights and integer output gradients keep every sum exact in float32, so
the comparisons hold whatever order a kernel adds in."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from spikezoo.layers import SepConv
from spikezoo.layers.conv_layout import MIN_KERNEL, convolve
from spikezoo.neurons import compact_saved_spikes, mark_spikes, saved_spikes


def integer_conv(channels: int, kernel: int, groups: int) -> nn.Conv2d:
    conv = nn.Conv2d(channels, channels, kernel, padding=kernel // 2, groups=groups, bias=False)
    with torch.no_grad():
        conv.weight.copy_(torch.randint(-3, 4, conv.weight.shape))
    return conv


def spikes(*shape: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(0)
    return (torch.rand(shape, generator=generator) < 0.3).float()


def layouts_seen(conv: nn.Conv2d) -> list[bool]:
    """Whether each input ``conv`` is called with is channels-last (and not contiguous)."""
    seen: list[bool] = []
    conv.register_forward_pre_hook(lambda module, args: seen.append(not args[0].is_contiguous()))
    return seen


def gradients(conv: nn.Conv2d, x: torch.Tensor, run) -> tuple[torch.Tensor, ...]:
    x = x.clone().requires_grad_()
    out = run(conv, x)
    grad_out = torch.randint(-2, 3, out.shape, generator=torch.Generator().manual_seed(1))
    grad_x, grad_w = torch.autograd.grad(out, (x, conv.weight), grad_out.float())
    return out, grad_x, grad_w


def test_a_large_depthwise_convolution_trains_channels_last_with_the_same_results():
    conv = integer_conv(16, MIN_KERNEL, groups=16)
    seen = layouts_seen(conv)
    x = spikes(2, 16, 12, 12)
    out, grad_x, grad_w = gradients(conv, x, convolve)
    assert seen == [True]
    assert out.is_contiguous()  # laid out as its input: the layers after it run as before
    expected = gradients(conv, x, lambda conv, x: conv(x))
    for got, want in zip((out, grad_x, grad_w), expected, strict=True):
        assert torch.equal(got, want)


@pytest.mark.parametrize(
    "case", ["no gradient", "evaluation input", "3x3", "grouped", "channels-last input", "compile"]
)
def test_other_calls_run_as_they_are_called(case, monkeypatch):
    kernel = 3 if case == "3x3" else MIN_KERNEL
    conv = integer_conv(16, kernel, groups=4 if case == "grouped" else 16)
    seen = layouts_seen(conv)
    x = spikes(2, 16, 12, 12)
    if case == "channels-last input":
        x = x.contiguous(memory_format=torch.channels_last)
    if case == "compile":  # as inside torch.compile, whose graph chooses layouts itself
        monkeypatch.setattr(torch.compiler, "is_compiling", lambda: True)
    if case == "no gradient":
        with torch.no_grad():
            out = convolve(conv, x)
    else:
        conv.requires_grad_(case != "evaluation input")
        out = convolve(conv, x.requires_grad_(case != "evaluation input"))
    assert seen == [case == "channels-last input"]
    assert out.is_contiguous(memory_format=torch.channels_last) == (case == "channels-last input")


def test_the_channels_last_copy_of_marked_spikes_is_marked_and_packed_unread(monkeypatch):
    checked = []
    monkeypatch.setattr(saved_spikes, "pack_spikes", lambda x: checked.append(x) or None)
    conv = integer_conv(16, MIN_KERNEL, groups=16)
    inputs = []
    conv.register_forward_pre_hook(lambda module, args: inputs.append(args[0]))
    with compact_saved_spikes() as compaction:
        x = spikes(2, 16, 12, 12).requires_grad_() * 1.0  # made by an operation, like a neuron's
        mark_spikes(x)
        convolve(conv, x)
        (copy,) = inputs
        assert saved_spikes.marked_as_spikes(copy)
        assert isinstance(compaction.pack(copy), saved_spikes.PackedSpikes)
    assert checked == []


def test_meta_spikeformers_separable_convolution_trains_its_depthwise_one_channels_last():
    separable = SepConv(8)  # a 7x7 depthwise convolution by default
    seen = layouts_seen(separable.depthwise)
    for training in (True, False):
        with torch.set_grad_enabled(training):
            separable(torch.randn(2, 1, 8, 6, 6))
    assert seen == [True, False]
