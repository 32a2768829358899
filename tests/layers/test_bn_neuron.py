"""BatchNorm + neuron fused in training: same spikes, statistics and gradients, one tensor saved.

Everything runs in float64 and compares the fused layers with the same layers unfused
(``set_bn_neuron_fusion(model, False)``): spikes and BatchNorm buffers bit for bit, gradients to
float64 rounding.
"""

from __future__ import annotations

import copy
import functools
import math

import pytest
import torch
from torch import nn

import spikezoo  # noqa: F401  (registers the models with timm)
from spikezoo.analysis import measure_saved_tensors
from spikezoo.layers import (
    GWSFFN,
    SPS,
    SSA,
    SepConv,
    SEWPatchEmbedding,
    SpikingConvBlock,
    SpikingMLP,
    SpikingSepConv,
    SpikingTokenMLP,
    TokenQKAttention,
    batch_norm_fire,
    batch_norms,
    bn_neuron,
    set_bn_neuron_fusion,
)
from spikezoo.neurons import (
    IntegerNeuron,
    MultiStepIF,
    MultiStepLIF,
    MultiStepPLIF,
    set_backend,
)
from spikezoo.neurons.backends import native
from tests.models.families import tiny, tiny_family


def _train_step(module: nn.Module, x: torch.Tensor, seed: int = 1) -> dict:
    """One forward+backward: the output, every gradient and every buffer afterwards."""
    leaf = x.clone().requires_grad_()
    out = module(leaf)
    grad = torch.randn(out.shape, dtype=out.dtype, generator=torch.Generator().manual_seed(seed))
    out.backward(grad)
    return dict(
        out=out.detach(),
        grad_x=leaf.grad,
        grads={n: p.grad for n, p in module.named_parameters()},
        buffers={n: b.clone() for n, b in module.named_buffers()},
    )


def _bytes_fusion_saves(module: nn.Module, x: torch.Tensor) -> int:
    """The bytes kept for backward by ``module`` unfused, less those kept fused; leaves it
    unfused."""
    fused = measure_saved_tensors(module, x, compact=True).kept_nbytes
    set_bn_neuron_fusion(module, False)
    return measure_saved_tensors(module, x, compact=True).kept_nbytes - fused


def _assert_fused_equals_unfused(module: nn.Module, x: torch.Tensor) -> None:
    unfused = copy.deepcopy(module)
    set_bn_neuron_fusion(unfused, False)
    fused, expected = _train_step(module, x), _train_step(unfused, x)
    assert torch.equal(fused["out"], expected["out"])
    assert fused["buffers"].keys() == expected["buffers"].keys()
    for name, buffer in fused["buffers"].items():
        assert torch.equal(buffer, expected["buffers"][name]), name  # running stats, counts
    torch.testing.assert_close(fused["grad_x"], expected["grad_x"], rtol=1e-12, atol=1e-14)
    for name, grad in fused["grads"].items():
        torch.testing.assert_close(grad, expected["grads"][name], rtol=1e-12, atol=1e-14, msg=name)


# the eager loops: nothing to compile, and this file tests the pairing, not a backend
LIF = functools.partial(MultiStepLIF, backend="torch")
PLIF = functools.partial(MultiStepPLIF, surrogate="atan", backend="torch")
INTEGER = functools.partial(IntegerNeuron, 4)
NEURONS = pytest.mark.parametrize("neuron", [LIF, PLIF, INTEGER], ids=["lif", "plif", "integer"])

#: Meta-SpikeFormer's and E-SpikeFormer's blocks, each with a BatchNorm feeding a neuron
METAFORMER_BLOCKS = {
    "sep_conv": lambda neuron: SepConv(4, kernel_size=3, neuron=neuron),
    "spiking_sep_conv": lambda neuron: SpikingSepConv(4, neuron, kernel_size=3),
    "conv_block": lambda neuron: SpikingConvBlock(4, 2, neuron),
    "conv_block_spiking_sep_conv": lambda neuron: SpikingConvBlock(
        4, 2, neuron, separable=SpikingSepConv
    ),
    "token_mlp": lambda neuron: SpikingTokenMLP(4, 8, neuron=neuron),
}


@pytest.mark.parametrize("pre_activation", [True, False], ids=["pre", "post"])
@pytest.mark.parametrize("neuron", [LIF, PLIF], ids=["lif", "plif"])
def test_spiking_mlp_fused_equals_unfused(neuron, pre_activation):
    torch.manual_seed(0)
    mlp = SpikingMLP(8, 16, neuron=neuron, pre_activation=pre_activation).double().train()
    _assert_fused_equals_unfused(mlp, torch.randn(2, 3, 8, 5, 5, dtype=torch.float64) * 2)


#: Spikformer's and QKFormer's post-activation layers: every BatchNorm feeds its neuron
POST_ACTIVATION_LAYERS = {
    "ssa": lambda neuron: SSA(8, 2, neuron=neuron),
    "ssa_q_k_first": lambda neuron: SSA(8, 2, kv_first=False, neuron=neuron),
    "token_qk_attention": lambda neuron: TokenQKAttention(8, 2, neuron=neuron),
    "sew_patch_embedding": lambda neuron: SEWPatchEmbedding(
        8, (8, 8), pooling=(False, True), shortcut_from=1, neuron=neuron
    ),
}


@pytest.mark.parametrize("neuron", [LIF, PLIF], ids=["lif", "plif"])
@pytest.mark.parametrize("layer", POST_ACTIVATION_LAYERS)
def test_post_activation_layers_fused_equal_unfused(layer, neuron):
    torch.manual_seed(0)
    module = POST_ACTIVATION_LAYERS[layer](neuron).double().train()
    _assert_fused_equals_unfused(module, torch.randn(2, 3, 8, 4, 4, dtype=torch.float64) * 2)


@pytest.mark.parametrize(("layer", "fused_pairs"), [("ssa", 4), ("token_qk_attention", 3)])
def test_post_activation_layers_save_no_membranes_of_the_fused_neurons(layer, fused_pairs):
    torch.manual_seed(0)
    module = POST_ACTIVATION_LAYERS[layer](LIF).double().train()
    x = torch.randn(2, 3, 8, 4, 4, dtype=torch.float64)
    membranes = 2 * 3 * 8 * 4 * 4 * 8  # [T, B, 8, 4, 4] float64
    assert _bytes_fusion_saves(module, x) >= fused_pairs * membranes


def test_sps_fused_equals_unfused():
    torch.manual_seed(0)
    sps = SPS(in_chans=3, embed_dim=16, neuron=LIF).double().train()
    _assert_fused_equals_unfused(sps, torch.randn(2, 2, 3, 16, 16, dtype=torch.float64))


@pytest.mark.parametrize("num_conv", [0, 1, 2])
def test_gwsffn_fused_equals_unfused(num_conv):
    # up's BatchNorm feeds a neuron and the sum z + u: both outputs carry gradients back
    torch.manual_seed(0)
    ffn = GWSFFN(8, ratio=2, group_size=4, num_conv=num_conv, neuron=LIF).double().train()
    _assert_fused_equals_unfused(ffn, torch.randn(2, 3, 8, 5, 5, dtype=torch.float64) * 2)


def test_the_gwsffn_saves_the_first_grouped_neurons_membranes_no_more():
    torch.manual_seed(0)
    ffn = GWSFFN(8, ratio=2, group_size=4, neuron=LIF).double().train()
    x = torch.randn(2, 3, 8, 5, 5, dtype=torch.float64)
    assert _bytes_fusion_saves(ffn, x) >= 2 * 3 * 16 * 5 * 5 * 8  # [T, B, hidden, H, W] float64


@pytest.mark.parametrize("grad_of", ["spikes", "normalised", "both"])
def test_with_normalised_gradients_flow_through_either_output(grad_of):
    torch.manual_seed(0)
    bn, neuron = nn.BatchNorm2d(4).double().train(), PLIF()
    y = torch.randn(2, 3, 4, 5, 5, dtype=torch.float64) * 2

    def grads(fused: bool) -> list:
        leaf = y.clone().requires_grad_()
        outputs = (
            batch_norm_fire(leaf, bn, neuron, with_normalised=True)
            if fused
            else (neuron(n := bn(leaf.flatten(0, 1)).unflatten(0, y.shape[:2])), n)
        )
        assert torch.equal(outputs[1], bn(y.flatten(0, 1)).unflatten(0, y.shape[:2]))
        chosen = {"spikes": outputs[:1], "normalised": outputs[1:], "both": outputs}[grad_of]
        params = [leaf, *bn.parameters(), *neuron.parameters()]
        return torch.autograd.grad(sum(o.square().sum() for o in chosen), params, allow_unused=True)

    for got, expected in zip(grads(True), grads(False), strict=True):
        if expected is None:
            assert got is None or not got.any()
        else:
            torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("grad_of", ["spikes", "normalised", "both"])
@pytest.mark.parametrize(
    "neuron",
    [LIF, PLIF, functools.partial(MultiStepIF, v_reset=None, backend="torch"), MultiStepLIF],
    ids=["lif", "plif", "if-soft", "lif-auto"],
)
def test_the_fused_backward_from_the_input_equals_the_graph_bit_for_bit(neuron, grad_of):
    """A neuron with ``input_gradient`` back-propagates from the recomputed input without a
    forward pass or a graph; the gradients are those of the generic path (forward again,
    ``torch.autograd.grad``) exactly, on any backend."""
    torch.manual_seed(0)
    bn, fire = nn.BatchNorm2d(4).train(), neuron()
    y = torch.randn(2, 3, 4, 5, 5) * 2

    def grads(via_graph: bool) -> list:
        if via_graph:
            fire.input_gradient = None  # what a neuron without the method gets
        leaf = y.clone().requires_grad_()
        outputs = batch_norm_fire(leaf, bn, fire, with_normalised=True)
        chosen = {"spikes": outputs[:1], "normalised": outputs[1:], "both": outputs}[grad_of]
        params = [leaf, *bn.parameters(), *fire.parameters()]
        loss = sum((o * torch.linspace(-1, 2, o.numel()).view_as(o)).sum() for o in chosen)
        found = torch.autograd.grad(loss, params, allow_unused=True)
        vars(fire).pop("input_gradient", None)
        return found

    for got, expected in zip(grads(False), grads(True), strict=True):
        assert (got is None) == (expected is None)
        assert got is None or torch.equal(got, expected)


CUDA = pytest.param(
    "cuda",
    marks=[
        pytest.mark.cuda,
        pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
    ],
)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("device", ["cpu", CUDA])
def test_the_backward_starts_from_the_forwards_normalised_input_bit_for_bit(device, dtype):
    """The recomputed BatchNorm is the forward's kernel (cuDNN's for float32 on CUDA, where the
    native kernel rounds differently), so the neuron back-propagates through the spikes that
    the forward pass fired."""
    torch.manual_seed(0)
    y = (torch.randn(4, 8, 64, 32, 32, device=device) * 3 + 1).to(dtype).requires_grad_()
    _assert_the_neuron_back_propagates_from_the_forwards_input(nn.BatchNorm2d(64).to(device), y)


def _assert_the_neuron_back_propagates_from_the_forwards_input(
    bn: nn.Module, y, neuron: nn.Module | None = None
) -> bool:
    """The input that the fused backward hands the neuron is the forward's normalised ``y``,
    bit for bit; or, where the neuron reads ``y`` through BatchNorm's map, its gradient is the
    one from the forward's normalised ``y``, bit for bit. Returns whether it read the map."""
    neuron, seen = neuron or LIF(), []

    def input_gradient(x, grad_spikes, normalisation=None):
        result = type(neuron).input_gradient(neuron, x, grad_spikes, normalisation)
        seen.append((x, grad_spikes, normalisation, result[0]))
        return result

    neuron.input_gradient = input_gradient
    spikes, normalised = batch_norm_fire(y, bn.train(), neuron, with_normalised=True)
    spikes.sum().backward()
    assert len(seen) == 1
    x, grad_spikes, normalisation, grad = seen[0]
    if normalisation is None:
        assert torch.equal(x, normalised)
    else:
        assert x is y and y.device.type == "cpu"
        expected, _ = type(neuron).input_gradient(neuron, normalised.detach(), grad_spikes)
        assert torch.equal(grad, expected)
    return normalisation is not None


class _Pair(nn.Module):
    """``batch_norm_fire`` as a module, with the switch that ``set_bn_neuron_fusion`` sets: the
    spikes, concatenated with BatchNorm's output where ``with_normalised``."""

    def __init__(
        self, bn: nn.Module, neuron: nn.Module | None = None, with_normalised: bool = True
    ) -> None:
        super().__init__()
        self.bn, self.neuron, self.fuse_bn_neuron = bn, neuron or LIF(), True
        self.with_normalised = with_normalised

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        if self.fuse_bn_neuron:
            out = batch_norm_fire(y, self.bn, self.neuron, self.with_normalised)
        else:
            normalised = self.bn(y.flatten(0, 1)).unflatten(0, y.shape[:2])
            spikes = self.neuron(normalised)
            out = (spikes, normalised) if self.with_normalised else spikes
        return torch.cat(out) if self.with_normalised else out


class _ShiftedBatchNorm(nn.BatchNorm2d):
    """A subclass computing otherwise than ``nn.BatchNorm2d``: the pair must call it."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x) + 0.25


@pytest.mark.parametrize(
    ("make_bn", "shape"),
    [
        (lambda: nn.BatchNorm2d(4), (2, 3, 4, 5, 5)),
        (lambda: nn.BatchNorm2d(4, momentum=None), (2, 3, 4, 5, 5)),
        (lambda: nn.BatchNorm2d(4, affine=False), (2, 3, 4, 5, 5)),
        (lambda: nn.BatchNorm2d(4, track_running_stats=False), (2, 3, 4, 5, 5)),
        (lambda: nn.BatchNorm1d(4), (2, 3, 4, 7)),
        (lambda: _ShiftedBatchNorm(4), (2, 3, 4, 5, 5)),
    ],
    ids=["default", "cumulative-average", "no-affine", "no-running-stats", "1d", "subclass"],
)
def test_the_fused_pair_computes_what_the_batch_norm_module_computes(make_bn, shape):
    """On the CPU the fused forward calls ``nn.BatchNorm``'s kernel itself, to keep its
    statistics: outputs, gradients, running statistics and counter are the module's, over two
    steps (the cumulative average changes its factor), whatever its options. A subclass runs
    as the plain pair: the fused backward would recompute ``nn.BatchNorm2d``, not it."""
    torch.manual_seed(0)
    fused = _Pair(make_bn()).double().train()
    unfused = copy.deepcopy(fused)
    set_bn_neuron_fusion(unfused, False)
    for step in range(2):
        x = torch.randn(shape, dtype=torch.float64) * 2
        got, expected = _train_step(fused, x, seed=step), _train_step(unfused, x, seed=step)
        assert torch.equal(got["out"], expected["out"])
        for name, buffer in got["buffers"].items():
            assert torch.equal(buffer, expected["buffers"][name]), name
        torch.testing.assert_close(got["grad_x"], expected["grad_x"], rtol=1e-12, atol=1e-14)
        for name, grad in got["grads"].items():
            torch.testing.assert_close(grad, expected["grads"][name], rtol=1e-12, atol=1e-14)


def test_sync_batch_norm_and_other_subclasses_are_not_fused():
    # SyncBatchNorm normalises with every process's statistics: recomputing them locally in
    # backward would give each process the gradients of its own batch alone
    y = torch.randn(2, 3, 4, 5, 5, requires_grad=True)
    for bn in (nn.SyncBatchNorm(4), _ShiftedBatchNorm(4), nn.BatchNorm2d(4)):
        grad_fn = type(batch_norm_fire(y, bn.train(), LIF()).grad_fn).__name__
        assert (grad_fn == "_BatchNormFireBackward") == (type(bn) is nn.BatchNorm2d)


@pytest.mark.parametrize("where", ["module", "global"])
def test_a_batch_norm_with_forward_hooks_is_called_as_a_module_once(where):
    torch.manual_seed(0)
    bn = nn.BatchNorm2d(4).double().train()
    seen = []

    def hook(module, args, output):
        if module is bn:
            seen.append(output.detach().clone())

    handle = (
        bn.register_forward_hook(hook)
        if where == "module"
        else nn.modules.module.register_module_forward_hook(hook)
    )
    try:
        y = torch.randn(2, 3, 4, 5, 5, dtype=torch.float64, requires_grad=True)
        spikes, normalised = batch_norm_fire(y, bn, LIF(), with_normalised=True)
        spikes.sum().backward()
    finally:
        handle.remove()
    assert len(seen) == 1 and torch.equal(seen[0], normalised.flatten(0, 1))
    assert y.grad is not None


@pytest.mark.parametrize("where", ["batch norm", "neuron", "global"])
def test_a_backward_hook_runs_with_the_gradients_of_the_unfused_pair(where):
    # a module's backward hook is set up by its call alone: a fused pair, which computes both
    # modules inside one autograd function, would leave it out
    torch.manual_seed(0)
    bn, neuron = nn.BatchNorm2d(4).double().train(), LIF()
    y = torch.randn(2, 3, 4, 5, 5, dtype=torch.float64)
    grad = torch.randn(y.shape, dtype=torch.float64)
    unhooked = copy.deepcopy(bn)
    seen = []

    def hook(module, grad_input, grad_output):
        seen.append((module, grad_output[0].clone()))

    if where == "global":
        handle = nn.modules.module.register_module_full_backward_hook(hook)
    else:
        handle = (bn if where == "batch norm" else neuron).register_full_backward_hook(hook)
    try:
        leaf = y.clone().requires_grad_()
        spikes = batch_norm_fire(leaf, bn, neuron)
        assert type(spikes.grad_fn).__name__ != "_BatchNormFireBackward"
        spikes.backward(grad)
    finally:
        handle.remove()
    expected = {"batch norm": [bn], "neuron": [neuron], "global": [neuron, bn]}[where]
    assert [module for module, _ in seen] == expected
    plain = y.clone().requires_grad_()
    fused = batch_norm_fire(plain, unhooked, LIF())
    assert type(fused.grad_fn).__name__ == "_BatchNormFireBackward"  # without the hook
    fused.backward(grad)
    assert torch.equal(spikes, fused)
    torch.testing.assert_close(leaf.grad, plain.grad, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize(
    ("make_bn", "shape", "message"),
    [
        (lambda: nn.BatchNorm2d(4, eps=0.0), (2, 3, 4, 5, 5), "eps must be positive"),
        (lambda: nn.BatchNorm2d(4), (1, 1, 4, 1, 1), "more than 1 value per channel"),
        (lambda: nn.BatchNorm1d(4), (2, 3, 4, 5, 5), "expected 2D or 3D input"),
    ],
    ids=["eps", "one-value-per-channel", "wrong-dims"],
)
def test_the_fused_pair_raises_what_the_module_raises_and_counts_nothing(make_bn, shape, message):
    bn = make_bn().train()
    y = torch.randn(shape, requires_grad=True)
    with pytest.raises(ValueError, match=message):
        bn(y.flatten(0, 1))
    bn.num_batches_tracked.zero_()
    before = {name: buffer.clone() for name, buffer in bn.named_buffers()}
    with pytest.raises(ValueError, match=message):
        batch_norm_fire(y, bn, LIF())
    for name, buffer in bn.named_buffers():
        assert torch.equal(buffer, before[name]), name


@pytest.mark.parametrize(
    "kind",
    [
        (torch.float32, torch.float32, 4, False, True),
        (torch.float32, torch.float32, 4, True, True),
        (torch.float32, torch.float32, 3, False, True),
        (torch.float64, torch.float64, 4, False, True),
        (torch.float64, None, 4, False, True),
        (torch.bfloat16, torch.float32, 4, False, True),
    ],
    ids=["fp32", "fp32-channels-last", "fp32-1d", "fp64", "fp64-no-affine", "bf16-autocast"],
)
def test_the_cpu_backward_recomputes_the_models_inputs_as_the_kernels_affine_map(kind):
    """For the inputs the models train on (float32, float64, bfloat16 with float32 weights),
    PyTorch's CPU kernel normalises by the affine map that the fused backward recomputes
    instead of rerunning the kernel: found on its probe, and on a large input here."""
    assert batch_norms._affine_reproduces_kernel(*kind)
    dtype, param_dtype, dims, channels_last, _ = kind
    shape = (2, 96, 23, 29)[:dims] if dims == 4 else (2, 96, 23 * 29)
    x = (torch.randn(shape, dtype=torch.float64) * 5 - 2).to(dtype)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    weight, bias = (None, None) if param_dtype is None else torch.randn(2, 96, dtype=param_dtype)
    expected, mean, invstd, _, _ = torch.ops.aten._batch_norm_impl_index(
        x, weight, bias, None, None, True, 0.0, 1e-5, False
    )
    assert torch.equal(batch_norms._affine_normalisation(x, weight, bias, mean, invstd), expected)


@pytest.fixture
def affine_map_off(monkeypatch):
    """The affine map made wrong, so that no kind of input passes the probe."""
    monkeypatch.setattr(
        batch_norms, "_affine_normalisation", lambda frames, *args: torch.zeros_like(frames)
    )
    batch_norms._affine_reproduces_kernel.cache_clear()
    yield
    batch_norms._affine_reproduces_kernel.cache_clear()


def test_where_the_affine_map_misses_the_kernel_the_backward_reruns_the_kernel(affine_map_off):
    torch.manual_seed(0)
    assert not batch_norms._affine_reproduces_kernel(torch.float32, torch.float32, 4, False, True)
    y = (torch.randn(2, 4, 8, 6, 6) * 3).requires_grad_()
    _assert_the_neuron_back_propagates_from_the_forwards_input(nn.BatchNorm2d(8), y)


def _step_peak(step) -> int:
    """Peak bytes the CPU allocator holds during ``step()`` above its start (allocation events
    summed in time order: deterministic)."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        step()
    events = sorted(
        (event.start_ns(), event.nbytes())
        for event in prof.profiler.kineto_results.events()
        if event.name() == "[memory]"
    )
    current = peak = 0
    for _, nbytes in events:
        current += nbytes
        peak = max(peak, current)
    return peak


@pytest.mark.parametrize("with_normalised", [False, True])
def test_a_fused_training_step_peaks_no_higher_than_the_unfused(with_normalised):
    """Forward and backward of the pair on the models' default backend on a CPU, the C loops:
    the fused backward recharges from the convolution's output through BatchNorm's map (or
    frees the recomputed input before BatchNorm's backward) and sums a residual output's
    gradient in place, so it never holds more than the unfused pair kept."""
    torch.manual_seed(0)
    bn, neuron = nn.BatchNorm2d(8).train(), MultiStepLIF(backend="native")
    y = torch.randn(4, 2, 8, 16, 16)

    def step(fused: bool) -> None:
        leaf = y.clone().requires_grad_()
        if fused:
            spikes, normalised = batch_norm_fire(leaf, bn, neuron, with_normalised=True)
        else:
            normalised = bn(leaf.flatten(0, 1)).unflatten(0, y.shape[:2])
            spikes = neuron(normalised)
        loss = spikes.sum() + (normalised.sum() if with_normalised else 0)
        del spikes, normalised
        loss.backward()

    step(True), step(False)  # warm
    activation = y.numel() * y.element_size()
    # within half an activation: the batch statistics and small gradients differ
    assert _step_peak(lambda: step(True)) <= _step_peak(lambda: step(False)) + activation // 2


@NEURONS
@pytest.mark.parametrize("block", METAFORMER_BLOCKS)
def test_metaformer_blocks_fused_equal_unfused(block, neuron):
    torch.manual_seed(0)
    module = METAFORMER_BLOCKS[block](neuron).double().train()
    _assert_fused_equals_unfused(module, torch.randn(2, 3, 4, 5, 5, dtype=torch.float64) * 2)


@pytest.mark.parametrize(
    ("block", "fused_pairs"),
    [("sep_conv", 1), ("spiking_sep_conv", 2), ("conv_block", 2), ("token_mlp", 1)],
)
def test_metaformer_blocks_save_no_membranes_of_the_fused_neurons(block, fused_pairs):
    # a LIF neuron saves its membranes [T, B, C, H, W]; every fused pair drops them
    torch.manual_seed(0)
    module = METAFORMER_BLOCKS[block](LIF).double().train()
    x = torch.randn(2, 3, 4, 5, 5, dtype=torch.float64)
    membranes = 2 * 3 * 4 * 5 * 5 * 8  # the narrowest hidden width, 4, in float64
    assert _bytes_fusion_saves(module, x) >= fused_pairs * membranes


@pytest.mark.parametrize(
    "family",
    [
        "spike_driven_transformer",
        "spiking_resformer",
        "spike_driven_transformer_v2",
        "spike_driven_transformer_v3",
        "spike_driven_transformer_v3_large",
        "spikformer",
        "spikingformer",
        "qkformer",
    ],
)
def test_a_model_fused_equals_unfused_with_the_same_state_dict_keys(family):
    torch.manual_seed(0)
    model = set_backend(tiny(family, **(tiny_family(family).shallow or {})), "torch")
    model = model.double().train()
    keys = list(model.state_dict())
    images = torch.randn(2, 3, 16, 16, dtype=torch.float64)
    _assert_fused_equals_unfused(model, images)
    set_bn_neuron_fusion(model, False)
    assert list(model.state_dict()) == keys


def test_the_pair_saves_the_convolution_output_and_not_the_membranes():
    torch.manual_seed(0)
    mlp = SpikingMLP(8, 16, neuron=LIF).double().train()
    x = torch.randn(2, 3, 8, 5, 5, dtype=torch.float64)
    membranes = 2 * 3 * 16 * 5 * 5 * 8  # fc2's neuron: [T, B, hidden, H, W] float64
    assert _bytes_fusion_saves(mlp, x) >= membranes


def test_evaluation_and_no_grad_run_the_plain_pair():
    torch.manual_seed(0)
    bn, neuron = nn.BatchNorm2d(4).double(), LIF()
    y = torch.randn(2, 3, 4, 5, 5, dtype=torch.float64, requires_grad=True)
    bn.eval()
    spikes = batch_norm_fire(y, bn, neuron)
    assert type(spikes.grad_fn).__name__ != "_BatchNormFireBackward"
    bn.train()
    with torch.no_grad():
        assert batch_norm_fire(y, bn, neuron).grad_fn is None
    assert type(batch_norm_fire(y, bn, neuron).grad_fn).__name__ == "_BatchNormFireBackward"


def test_frozen_batch_norm_and_hooks_see_one_forward():
    torch.manual_seed(0)
    bn, neuron = nn.BatchNorm2d(4).double().train(), LIF()
    bn.requires_grad_(False)
    calls = []
    neuron.register_forward_hook(lambda *args: calls.append(1))
    y = torch.randn(2, 3, 4, 5, 5, dtype=torch.float64, requires_grad=True)
    batch_norm_fire(y, bn, neuron).sum().backward()
    assert y.grad is not None and bn.weight.grad is None
    assert calls == [1]  # the backward pass recomputes without calling the hooks again


def test_switch_must_be_a_bool():
    with pytest.raises(TypeError, match="enabled"):
        set_bn_neuron_fusion(SpikingMLP(8), "yes")


def test_integer_neurons_take_the_plain_pair():
    # an integer neuron keeps a one-byte mask: recomputing BatchNorm in backward would not pay
    bn = nn.BatchNorm2d(4).double().train()
    y = torch.randn(2, 3, 4, 5, 5, dtype=torch.float64, requires_grad=True)
    assert not IntegerNeuron(4).fuse_with_batch_norm and LIF().fuse_with_batch_norm
    grad_fn = batch_norm_fire(y, bn, IntegerNeuron(4)).grad_fn
    assert type(grad_fn).__name__ != "_BatchNormFireBackward"


# Reading through BatchNorm's map: the C loops (backend "native", float32 on the CPU) read the
# convolution's output y through BatchNorm's per-channel affine map, and BatchNorm's output is
# never written. Everything is compared bit for bit with the pair that writes it.

NATIVE_NEURONS = pytest.mark.parametrize(
    "make_neuron",
    [
        functools.partial(MultiStepLIF, backend="native"),
        functools.partial(MultiStepPLIF, surrogate="atan", backend="native"),
        functools.partial(MultiStepIF, v_reset=None, backend="native"),
    ],
    ids=["lif", "plif", "if_soft"],
)
#: ``[T, B, C, H, W]`` for ``BatchNorm2d`` and ``[T, B, C, N]`` for ``BatchNorm1d``; 63
#: values per channel (a vector loop and a remainder)
SHAPES = pytest.mark.parametrize("shape", [(4, 2, 24, 7, 9), (4, 2, 24, 63)], ids=["2d", "1d"])


def _batch_norm_of(shape: tuple[int, ...], affine: bool = True) -> nn.Module:
    """A BatchNorm for ``shape`` with random running statistics and parameters (seed 0)."""
    generator = torch.Generator().manual_seed(0)
    channels = shape[2]
    bn = (nn.BatchNorm2d if len(shape) == 5 else nn.BatchNorm1d)(channels, affine=affine)
    bn.running_mean.normal_(generator=generator)
    bn.running_var.uniform_(0.1, 10.0, generator=generator)
    if affine:
        nn.init.normal_(bn.weight, generator=generator)
        nn.init.normal_(bn.bias, generator=generator)
    return bn


def _input(shape: tuple[int, ...]) -> torch.Tensor:
    return torch.randn(shape, generator=torch.Generator().manual_seed(1)) * 3 + 1


@pytest.mark.parametrize("training", [False, True], ids=["eval", "train"])
@SHAPES
@pytest.mark.parametrize("affine", [True, False], ids=["affine", "plain"])
def test_the_map_reads_batch_norms_output_bit_for_bit(training, shape, affine):
    """What a neuron reads through the map (an IF neuron that never fires, one step from rest:
    its charged membrane) is BatchNorm's output, in training with the batch statistics and in
    evaluation with the running ones."""
    assert bn_neuron._map_reproduces_kernel(training)
    bn, y = _batch_norm_of(shape, affine).train(training), _input(shape)
    frames = y.flatten(0, 1)
    with torch.no_grad():
        if training:
            expected = copy.deepcopy(bn)(frames)
            _, mean, invstd, _, _ = batch_norms._training_batch_norm_by_statistics_kernel(
                frames, bn, normalise=False
            )
        else:
            expected, (mean, invstd) = bn(frames), bn_neuron._running_statistics(bn)
    normalisation = bn_neuron._normalisation(y, bn, mean, invstd)
    _, read, _ = native.forward(
        frames.reshape(1, -1), torch.zeros(()), torch.zeros(()), bn_neuron._NEVER_FIRES, True,
        False, normalisation,
    )  # fmt: skip
    assert torch.equal(read.view(frames.shape), expected)


@pytest.mark.parametrize(
    "make_neuron",
    [
        *NATIVE_NEURONS.args[1],
        functools.partial(IntegerNeuron, levels=4),
        functools.partial(IntegerNeuron, 8, 1.0, "half_up", "open"),
    ],
    ids=[*NATIVE_NEURONS.kwargs["ids"], "integer_4", "integer_8_half_up"],
)
@SHAPES
@pytest.mark.parametrize("affine", [True, False], ids=["affine", "plain"])
def test_evaluation_reads_through_the_map_with_the_spikes_of_the_pair(
    make_neuron, shape, affine, maps_read
):
    bn, neuron, y = _batch_norm_of(shape, affine).eval(), make_neuron(), _input(shape)
    with torch.no_grad():
        spikes = batch_norm_fire(y, bn, neuron)
        expected = neuron(bn(y.flatten(0, 1)).unflatten(0, shape[:2]))
    assert maps_read == [shape]
    assert torch.equal(spikes, expected)


@pytest.mark.parametrize(
    "make_neuron",
    [functools.partial(MultiStepLIF, backend="native"), IntegerNeuron],
    ids=["lif", "integer"],
)
def test_evaluation_reads_through_the_map_from_map_from_values_on(
    make_neuron, maps_read, monkeypatch
):
    """Below :data:`~spikezoo.layers.bn_neuron.MAP_FROM_VALUES` values the pair runs (setting
    the map up would cost what it saves), from there on the neuron reads through the map."""
    monkeypatch.setattr(bn_neuron, "MAP_FROM_VALUES", 1000)
    neuron = make_neuron()
    for shape in [(4, 2, 24, 5), (4, 2, 24, 7)]:  # 960 and 1,344 values
        bn, y = _batch_norm_of(shape).eval(), _input(shape)
        with torch.no_grad():
            spikes = batch_norm_fire(y, bn, neuron)
            assert torch.equal(spikes, neuron(bn(y.flatten(0, 1)).unflatten(0, shape[:2])))
    assert maps_read == [(4, 2, 24, 7)]


@pytest.mark.parametrize(
    "case", ["hook on the neuron", "hook on the batch norm", "gradient", "normalised wanted"]
)
def test_evaluation_runs_the_pair_where_the_map_would_hide_something(case, maps_read):
    """A hook sees the normalised input, a gradient flows, a caller gets ``bn(y)``."""
    shape = (4, 2, 24, 7, 9)
    bn, neuron, y = _batch_norm_of(shape).eval(), MultiStepLIF(backend="native"), _input(shape)
    seen = []
    if case == "hook on the neuron":
        neuron.register_forward_hook(lambda module, args, out: seen.append(args[0]))
    elif case == "hook on the batch norm":
        bn.register_forward_hook(lambda module, args, out: seen.append(out))
    elif case == "gradient":
        y.requires_grad_()
    with torch.set_grad_enabled(case == "gradient"):
        out = batch_norm_fire(y, bn, neuron, with_normalised=case == "normalised wanted")
        expected = bn(y.flatten(0, 1)).unflatten(0, shape[:2])
    assert maps_read == []
    if case == "gradient":
        assert out.grad_fn is not None
    if case == "normalised wanted":
        assert torch.equal(out[1], expected)
    if seen:
        assert torch.equal(seen[0].view(shape), expected)


@NATIVE_NEURONS
@pytest.mark.parametrize(
    "shape",
    [(4, 2, 24, 31, 15), (4, 2, 24, 359)],  # spikezoo's statistics kernel takes 65,536 values up
    ids=["2d", "1d"],
)
def test_training_reads_through_the_map_with_the_pairs_spikes_statistics_and_gradients(
    make_neuron, shape, maps_read
):
    """Forward: spikes and running statistics of the pair; backward: the recharge reads ``y``
    through the map too, and every gradient is the pair's, bit for bit."""
    assert math.prod(shape) >= batch_norms.MIN_VALUES
    bn, neuron, y = _batch_norm_of(shape).train(), make_neuron(), _input(shape)
    module = _Pair(bn, neuron, with_normalised=False)
    unfused = copy.deepcopy(module)
    set_bn_neuron_fusion(unfused, False)
    fused, expected = _train_step(module, y), _train_step(unfused, y)
    assert maps_read == [shape]
    for key in ("out", "grad_x"):
        assert torch.equal(fused[key], expected[key]), key
    for kind in ("grads", "buffers"):
        for name, value in fused[kind].items():
            assert torch.equal(value, expected[kind][name]), name


def test_the_fused_backward_recharges_through_the_map():
    torch.manual_seed(0)
    y = (torch.randn(4, 8, 64, 12, 12) * 3 + 1).requires_grad_()
    assert _assert_the_neuron_back_propagates_from_the_forwards_input(
        nn.BatchNorm2d(64), y, MultiStepLIF(backend="native")
    )


def test_a_map_that_misses_batch_norm_leaves_the_pair(monkeypatch, maps_read):
    """Where the map's probe fails (a build that computes otherwise), nothing reads through it,
    and the spikes are still the pair's."""
    monkeypatch.setattr(bn_neuron, "_map_reproduces_kernel", lambda training: False)
    shape = (4, 2, 24, 7, 9)
    bn, neuron, y = _batch_norm_of(shape), MultiStepLIF(backend="native"), _input(shape)
    with torch.no_grad():
        spikes = batch_norm_fire(y, bn.eval(), neuron)
        expected = neuron(bn(y.flatten(0, 1)).unflatten(0, shape[:2]))
    out = _train_step(_Pair(bn.train(), neuron, with_normalised=False), y)
    assert maps_read == [] and torch.equal(spikes, expected) and out["grad_x"] is not None


def test_the_probe_refuses_a_map_that_rounds_otherwise(monkeypatch):
    bn_neuron._map_reproduces_kernel.cache_clear()
    monkeypatch.setattr(bn_neuron, "_running_statistics", lambda bn: (bn.running_mean,
                        1 / torch.sqrt(bn.running_var + bn.eps) * (1 + 2**-20)))  # fmt: skip
    try:
        assert not bn_neuron._map_reproduces_kernel(training=False)
        assert bn_neuron._map_reproduces_kernel(training=True)
    finally:
        bn_neuron._map_reproduces_kernel.cache_clear()


def test_a_compiled_evaluation_traces_the_pair_in_one_graph(maps_read):
    """Under ``torch.compile`` the pair is what the graph records (the C loops would break it):
    one graph, no break, and nothing of the map (its ``rsqrt``) traced into it."""
    shape = (4, 2, 24, 7, 9)
    bn, neuron = _batch_norm_of(shape).eval(), MultiStepLIF(backend="native")
    module = _Pair(bn, neuron, with_normalised=False).eval()
    torch._dynamo.reset()
    try:
        with torch.no_grad():
            explanation = torch._dynamo.explain(module)(_input(shape))
    finally:
        torch._dynamo.reset()
    assert explanation.graph_break_count == 0, explanation.break_reasons
    assert explanation.graph_count == 1
    traced = "".join(str(graph.graph) for graph in explanation.graphs)
    assert "rsqrt" not in traced and "batch_norm" in traced
    assert maps_read == []
