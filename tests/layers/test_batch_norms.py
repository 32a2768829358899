"""``batch_statistics``: BatchNorm's training statistics from spikezoo's C kernel equal PyTorch's
CPU kernel's bit for bit (mean, inverse standard deviation, running averages); ``batch_norm``,
``LayerThenBatchNorm`` and the fused BatchNorm + neuron pair, which use them, compute what
``nn.BatchNorm`` computes: outputs, gradients and buffers.

Both sides run the same IEEE operations in the same order on the same machine, so the
comparisons are exact by construction, not by the luck of a rounding."""

from __future__ import annotations

import logging

import pytest
import torch
from torch import nn

from spikezoo.layers import LayerThenBatchNorm, batch_norm, batch_norm_fire
from spikezoo.layers import batch_norms as module
from spikezoo.layers.batch_norms import batch_statistics
from spikezoo.neurons import MultiStepLIF


@pytest.fixture(autouse=True)
def every_size(monkeypatch):
    """The C kernel for inputs of any size (the models' layers take it from MIN_VALUES on)."""
    monkeypatch.setattr(module, "MIN_VALUES", 0)


def kernel(frames, running_mean, running_var, momentum, eps):
    _, mean, invstd, _, _ = torch.ops.aten._batch_norm_impl_index(
        frames, None, None, running_mean, running_var, True, momentum, eps, False
    )
    return mean, invstd


def cases():
    generator = torch.Generator().manual_seed(0)
    shapes = [(1, 384, 14, 14), (4, 19, 35), (2, 8, 2), (3, 9, 5, 7), (1, 2, 3), (16, 64, 8, 8)]
    for index, shape in enumerate(shapes * 4):
        scale = 10.0 ** torch.randint(-6, 6, (1,), generator=generator).item()
        frames = torch.randn(shape, generator=generator) * scale
        frames += torch.randn(1, shape[1], *[1] * (len(shape) - 2), generator=generator) * scale
        if index % 3 == 0:  # spikes-like sparsity, and a silent channel
            frames *= torch.rand(shape, generator=generator) < 0.3
            frames[:, 0] = 0
        momentum = torch.rand(1, generator=generator).item()
        eps, untracked = [1e-5, 1e-3, 0.5][index % 3], index % 4 == 3
        yield pytest.param(frames, momentum, eps, untracked, id=f"{shape}-{index}")


@pytest.mark.parametrize("frames, momentum, eps, untracked", list(cases()))
def test_equals_the_kernel_bit_for_bit(frames, momentum, eps, untracked):
    channels = frames.shape[1]
    generator = torch.Generator().manual_seed(1)
    running = [None, None]
    if not untracked:
        running = list(torch.rand(2, channels, generator=generator).unbind())
    ours = [None if r is None else r.clone() for r in running]
    theirs = [None if r is None else r.clone() for r in running]
    mean, invstd = batch_statistics(frames, *ours, momentum, eps)
    expected = kernel(frames, *theirs, momentum, eps)
    assert torch.equal(mean, expected[0]) and torch.equal(invstd, expected[1])
    for a, b in zip(ours, theirs, strict=True):
        assert (a is None and b is None) or torch.equal(a, b)


@pytest.mark.parametrize(
    "frames",
    [
        torch.randn(4, 6, 5, dtype=torch.float64),  # another dtype
        torch.randn(4, 6, 5, 5).contiguous(memory_format=torch.channels_last),
        torch.randn(4, 6, 10)[:, :, ::2],  # not contiguous
        torch.randn(8, 6),  # one value per sample and channel: PyTorch's vectorised path
        torch.randn(4, 6, 1, 1),
        torch.randn(4, 1, 5),  # one channel
    ],
    ids=["float64", "channels-last", "strided", "2-d", "1x1", "one-channel"],
)
def test_declines_what_the_kernel_computes_otherwise(frames):
    running = torch.zeros(frames.shape[1]), torch.ones(frames.shape[1])
    assert batch_statistics(frames, *running, 0.1, 1e-5) is None
    assert torch.equal(running[0], torch.zeros(frames.shape[1]))
    assert torch.equal(running[1], torch.ones(frames.shape[1]))


def test_fewer_values_than_min_values_are_declined(monkeypatch):
    monkeypatch.setattr(module, "MIN_VALUES", 4 * 6 * 5 + 1)
    running = torch.zeros(6), torch.ones(6)
    assert batch_statistics(torch.randn(4, 6, 5), *running, 0.1, 1e-5) is None
    assert torch.equal(running[0], torch.zeros(6)) and torch.equal(running[1], torch.ones(6))
    monkeypatch.setattr(module, "MIN_VALUES", 4 * 6 * 5)
    assert batch_statistics(torch.randn(4, 6, 5), *running, 0.1, 1e-5) is not None


def test_running_statistics_of_another_dtype_are_declined():
    running = torch.zeros(6, dtype=torch.float64), torch.ones(6, dtype=torch.float64)
    assert batch_statistics(torch.randn(4, 6, 5), *running, 0.1, 1e-5) is None


@pytest.mark.parametrize("size", [3, 12])
def test_running_statistics_of_another_size_are_declined_and_left_alone(size):
    running = torch.zeros(size), torch.ones(size)
    assert batch_statistics(torch.randn(4, 6, 5), *running, 0.1, 1e-5) is None
    assert torch.equal(running[0], torch.zeros(size)) and torch.equal(running[1], torch.ones(size))


@pytest.mark.parametrize("track", [True, False], ids=["running statistics", "weight only"])
def test_a_batch_norm_of_another_width_is_refused_by_pytorch_with_nothing_written(track):
    """The kernel reads and writes one value per channel of the input: a BatchNorm for fewer
    channels goes to PyTorch's kernel, which names the mismatch, before anything is written."""
    bn = nn.BatchNorm2d(3, track_running_stats=track).train()
    plain = nn.BatchNorm2d(3, track_running_stats=track).train()
    x = torch.randn(4, 6, 5, 5)
    with pytest.raises(RuntimeError, match="should contain 6 elements not 3"):
        batch_norm(bn, x)
    with pytest.raises(RuntimeError, match="should contain 6 elements not 3"):
        plain(x)
    # as after PyTorch's own refusal (which counts the batch in num_batches_tracked first)
    for ours, theirs in zip(bn.state_dict().values(), plain.state_dict().values(), strict=True):
        assert torch.equal(ours, theirs)


def _up_an_ulp(t):
    return torch.nextafter(t, torch.full_like(t, float("inf")))


@pytest.mark.parametrize("output", ["mean", "normalised", "recomputed"])
def test_a_kernel_unequal_to_pytorchs_is_not_used(output, monkeypatch, caplog):
    compute, normalise = module._compute, module._normalise

    def compute_off(*args, **kwargs):
        normalised, mean, invstd = compute(*args, **kwargs)
        if output == "mean":
            mean = _up_an_ulp(mean)
        elif output == "normalised" and normalised is not None:
            normalised = _up_an_ulp(normalised)
        return normalised, mean, invstd

    monkeypatch.setattr(module, "_compute", compute_off)
    if output == "recomputed":
        monkeypatch.setattr(module, "_normalise", lambda *args: _up_an_ulp(normalise(*args)))
    module._kernel.cache_clear()
    try:
        with caplog.at_level(logging.WARNING, logger="spikezoo.layers.batch_norms"):
            assert batch_statistics(torch.randn(4, 6, 5), None, None, 0.1, 1e-5) is None
        assert "differs from PyTorch" in caplog.text
    finally:
        module._kernel.cache_clear()


def test_the_output_is_the_kernels_on_any_number_of_threads():
    generator = torch.Generator().manual_seed(11)
    frames = torch.randn(3, 37, 6, 7, generator=generator) * 4 - 1
    weight, bias = torch.randn(2, 37, generator=generator).unbind()
    expected, mean, invstd, _, _ = torch.ops.aten._batch_norm_impl_index(
        frames, weight, bias, None, None, True, 0.1, 1e-5, False
    )
    kernels, threads = module._kernel(), torch.get_num_threads()
    try:
        for count in (1, 2, 5):  # 5 blocks of eight channels: one each, or shared
            torch.set_num_threads(count)
            normalised, *statistics = module._compute(
                kernels, frames, weight, bias, None, None, 0.1, 1e-5, normalise=True
            )
            recomputed = module._normalise(kernels, frames, weight, bias, mean, invstd)
            assert torch.equal(normalised, expected) and torch.equal(recomputed, expected)
            assert torch.equal(statistics[0], mean) and torch.equal(statistics[1], invstd)
    finally:
        torch.set_num_threads(threads)


def test_either_contraction_rounds_as_it_says():
    """The variant the probe did not pick is right too: unfused, ``x * alpha`` and ``+ beta``
    each rounded (as two PyTorch operations round them); fused, one rounding of the exact
    ``x * alpha + beta`` (float64 holds the product of two floats exactly)."""
    generator = torch.Generator().manual_seed(12)
    frames = torch.randn(2, 9, 40, generator=generator) * 3 + 2
    weight, bias, mean = torch.randn(3, 9, generator=generator).unbind()
    invstd = torch.rand(9, generator=generator) + 0.5
    alpha = (invstd * weight).view(-1, 1)
    kernels = module._kernel()
    for contract in (False, True):
        ours = module._normalise(
            kernels._replace(contract=contract), frames, weight, bias, mean, invstd
        )
        if contract:
            beta = (bias.double() - mean.double() * alpha.view(-1).double()).float().view(-1, 1)
            expected = (frames.double() * alpha.double() + beta.double()).float()
        else:
            beta = (bias - mean * alpha.view(-1)).view(-1, 1)
            expected = torch.add(torch.mul(frames, alpha), beta)
        assert torch.equal(ours, expected), contract


def fused_step(bn: nn.BatchNorm2d, y: torch.Tensor, use_kernel: bool, monkeypatch):
    with monkeypatch.context() as patch:
        if not use_kernel:
            patch.setattr(module, "_kernel", lambda: None)
        y = y.clone().requires_grad_()
        spikes, normalised = batch_norm_fire(y, bn, MultiStepLIF(), with_normalised=True)
        generator = torch.Generator().manual_seed(2)
        (spikes * torch.randn(spikes.shape, generator=generator)).sum().backward(retain_graph=True)
        (normalised * torch.randn(normalised.shape, generator=generator)).sum().backward()
    return spikes, normalised, y.grad, bn.weight.grad, bn.bias.grad, bn.running_mean, bn.running_var


def test_the_fused_pair_computes_what_it_did_with_pytorchs_kernel(monkeypatch):
    assert module._kernel() is not None  # built and probed before the spy goes in
    calls = []
    compute = module._compute
    monkeypatch.setattr(
        module, "_compute", lambda *args, **kwargs: calls.append(1) or compute(*args, **kwargs)
    )
    generator = torch.Generator().manual_seed(3)
    y = torch.randn(2, 3, 16, 9, 9, generator=generator) * 2 + 1
    results = []
    for use_kernel in (True, False):
        bn = nn.BatchNorm2d(16, momentum=None).train()
        with torch.no_grad():
            bn.weight.uniform_(0.5, 1.5, generator=torch.Generator().manual_seed(4))
            bn.bias.uniform_(-0.5, 0.5, generator=torch.Generator().manual_seed(5))
        results.append(fused_step(bn, y, use_kernel, monkeypatch))
    assert len(calls) == 1  # the C kernel ran in the first step only
    for ours, theirs in zip(*results, strict=True):
        assert torch.equal(ours, theirs)
    assert results[0][0].sum() > 0  # some neurons fired


def _norm_step(bn: nn.Module, x: torch.Tensor, call) -> list:
    """Output, input and parameter gradients and buffers after one training call."""
    x = x.clone().requires_grad_()
    out = call(bn, x)
    grad = torch.randn(out.shape, generator=torch.Generator().manual_seed(6))
    out.backward(grad)
    params = [p.grad for p in bn.parameters()]
    return [out.detach(), x.grad, *params, *[b.clone() for b in bn.buffers()]], out.grad_fn


@pytest.mark.parametrize(
    "make",
    [
        lambda: nn.BatchNorm2d(12),
        lambda: nn.BatchNorm2d(12, momentum=None),
        lambda: nn.BatchNorm2d(12, affine=False),
        lambda: nn.BatchNorm2d(12, track_running_stats=False),
        lambda: nn.BatchNorm1d(12),
    ],
    ids=["default", "cumulative", "no-affine", "untracked", "1d"],
)
def test_batch_norm_computes_what_the_module_computes(make):
    generator = torch.Generator().manual_seed(7)
    shape = (4, 12, 30) if isinstance(make(), nn.BatchNorm1d) else (4, 12, 5, 6)
    x = torch.randn(shape, generator=generator) * 3 + 1
    results = []
    for call in (batch_norm, lambda bn, x: bn(x)):
        bn = make().train()
        if bn.weight is not None:
            with torch.no_grad():
                bn.weight.uniform_(0.5, 1.5, generator=torch.Generator().manual_seed(8))
                bn.bias.uniform_(-1, 1, generator=torch.Generator().manual_seed(9))
        for _ in range(2):  # the running statistics of the second call start from the first's
            bn.zero_grad(set_to_none=True)
            values, grad_fn = _norm_step(bn, x, call)
        results.append((values, type(grad_fn).__name__))
    (ours, our_node), (theirs, their_node) = results
    assert our_node == "_TrainingBatchNormBackward" and their_node == "NativeBatchNormBackward0"
    for a, b in zip(ours, theirs, strict=True):
        assert (a is None and b is None) or torch.equal(a, b)


@pytest.mark.parametrize(
    "case",
    [
        "plain",
        "eval",
        "float64",
        "channels-last",
        "forward-hooked",
        "backward-hooked",
        "subclass",
        "no-statistics-kernel",
    ],
)
def test_batch_norm_calls_the_module_where_it_would_compute_otherwise(case, monkeypatch):
    bn = nn.BatchNorm2d(6).train()
    x = torch.randn(4, 6, 5, 5)
    if case == "eval":
        bn.eval()
    elif case == "float64":
        bn, x = bn.double(), x.double()
    elif case == "channels-last":
        x = x.contiguous(memory_format=torch.channels_last)
    elif case == "forward-hooked":
        bn.register_forward_pre_hook(lambda *args: None)
    elif case == "backward-hooked":
        bn.register_full_backward_hook(lambda *args: None)
    elif case == "subclass":
        bn = nn.SyncBatchNorm(6).train()
    elif case == "no-statistics-kernel":
        monkeypatch.setattr(module, "_kernel", lambda: None)
    calls = []
    forward = type(bn).forward
    monkeypatch.setattr(type(bn), "forward", lambda self, x: calls.append(1) or forward(self, x))
    out = batch_norm(bn, x.requires_grad_())
    kernel = type(out.grad_fn).__name__ == "_TrainingBatchNormBackward"
    # the kernel's path computes the module without calling it (no hook could tell them apart)
    assert (calls, kernel) == (([], True) if case == "plain" else ([1], False))


@pytest.mark.parametrize("where", ["module", "global"])
def test_a_backward_hook_on_the_batch_norm_runs(where):
    # a module's backward hook is set up by its call alone: the kernel's path would leave it out
    bn = nn.BatchNorm2d(6).train()
    x = torch.randn(4, 6, 5, 5, generator=torch.Generator().manual_seed(0), requires_grad=True)
    seen = []

    def hook(module, grad_input, grad_output):
        seen.append((module, grad_output[0].clone(), grad_input[0].clone()))

    handle = (
        bn.register_full_backward_hook(hook)
        if where == "module"
        else nn.modules.module.register_module_full_backward_hook(hook)
    )
    try:
        out = batch_norm(bn, x)
        grad = torch.randn(out.shape, generator=torch.Generator().manual_seed(1))
        out.backward(grad)
    finally:
        handle.remove()
    assert len(seen) == 1 and seen[0][0] is bn
    assert torch.equal(seen[0][1], grad) and torch.equal(seen[0][2], x.grad)


def test_layer_then_batch_norm_is_the_plain_sequential_with_its_keys_and_outputs():
    torch.manual_seed(0)
    plain = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8)).train()
    ours = LayerThenBatchNorm(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8)).train()
    assert ours.load_state_dict(plain.state_dict()) is not None
    assert list(ours.state_dict()) == list(plain.state_dict())
    x = torch.randn(2, 3, 9, 9)
    out = ours(x)
    assert type(out.grad_fn).__name__ == "_TrainingBatchNormBackward"
    assert torch.equal(out, plain(x))
    graph = torch.fx.symbolic_trace(ours).graph  # traced: the BatchNorm stays a module call
    assert [n.target for n in graph.nodes if n.op == "call_module"] == ["0", "1"]
