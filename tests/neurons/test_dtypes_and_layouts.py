"""Dtypes (float32/64, half precision, autocast), memory layouts, torch.compile and saved memory."""

from __future__ import annotations

from unittest import mock

import pytest
import torch
from torch import nn

from spikezoo.layers.temporal import per_step
from spikezoo.neurons import (
    MultiStepIF,
    MultiStepLIF,
    MultiStepPLIF,
    multistep_lif,
    set_backend,
)


def make(kind: str, **kwargs) -> nn.Module:
    kwargs.setdefault("backend", "torch")
    if kind == "lif":
        return MultiStepLIF(tau=1.5, **kwargs)
    if kind == "plif":
        return MultiStepPLIF(init_tau=1.5, **kwargs)
    return MultiStepIF(v_threshold=1.5, **kwargs)


def randn(*shape, seed=0, dtype=torch.float32):
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=gen, dtype=torch.float64).to(dtype)


def forward_backward(neuron: nn.Module, x: torch.Tensor, grad_spikes: torch.Tensor, **kwargs):
    """Spikes, final membrane and input gradient of ``sum(spikes * grad_spikes) + sum(v)``."""
    x = x.detach().requires_grad_()
    spikes, v_final = neuron(x, return_state=True, **kwargs)
    ((spikes * grad_spikes).sum() + v_final.float().sum()).backward()
    return spikes, v_final, x.grad


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("kind", ["lif", "plif", "if"])
def test_full_precision_dtypes_are_kept(kind, dtype):
    neuron = make(kind).to(dtype)
    x = (randn(5, 3, 4) * 2 + 1).to(dtype).requires_grad_()
    spikes, v_final = neuron(x, return_state=True)
    assert spikes.dtype == dtype
    assert v_final.dtype == dtype
    assert 0 < spikes.mean() < 1
    (spikes.sum() + v_final.sum()).backward()
    assert x.grad.dtype == dtype
    if kind == "plif":
        assert neuron.w.grad.dtype == dtype and neuron.w.grad != 0


def test_float32_module_on_float64_input_computes_in_float64():
    """A PLIF whose w stayed float32 still integrates a float64 input in float64."""
    neuron = make("plif")
    x = randn(6, 10, dtype=torch.float64) * 2 + 1
    spikes, v_final = neuron(x, return_state=True)
    expected, expected_v = make("plif").double()(x, return_state=True)
    assert spikes.dtype == v_final.dtype == torch.float64
    assert torch.equal(spikes, expected)
    torch.testing.assert_close(v_final, expected_v, rtol=1e-7, atol=1e-7)


def _representable_in_half():
    """Values exactly representable in float16 and bfloat16 (multiples of 1/16 in [-4, 4])."""
    gen = torch.Generator().manual_seed(1)
    return torch.randint(-64, 65, (6, 4, 5), generator=gen).float() / 16


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["f16", "bf16"])
@pytest.mark.parametrize("kind", ["lif", "plif", "if"])
def test_half_precision_inputs_integrate_in_float32(kind, dtype):
    x32 = _representable_in_half()
    x_half = x32.to(dtype)
    assert torch.equal(x_half.float(), x32)
    grad_spikes = torch.linspace(-2, 2, x32.numel()).reshape(x32.shape).to(dtype).float()

    neuron = make(kind)
    spikes32, v32, grad32 = forward_backward(neuron, x32, grad_spikes)
    w_grad32 = neuron.w.grad.clone() if kind == "plif" else None
    neuron.zero_grad()
    spikes_h, v_h, grad_h = forward_backward(neuron, x_half, grad_spikes.to(dtype))

    assert 0 < spikes32.mean() < 1
    assert spikes_h.dtype == dtype
    assert torch.equal(spikes_h.float(), spikes32)
    assert v_h.dtype == torch.float32  # the membrane is kept in float32
    assert torch.equal(v_h, v32)
    assert grad_h.dtype == dtype
    # The backward runs in float32 too; the input gradient is rounded once, to the input dtype.
    assert torch.equal(grad_h, grad32.to(dtype))
    if kind == "plif":
        assert torch.equal(neuron.w.grad, w_grad32)


def test_autocast_bfloat16_after_conv():
    torch.manual_seed(0)
    t, b, c = 3, 2, 4
    conv = nn.Conv2d(c, c, 3, padding=1)
    lif = MultiStepLIF(backend="torch")
    images = torch.randn(t * b, c, 6, 6) * 2
    with torch.autocast("cpu", dtype=torch.bfloat16):
        membrane = conv(images).unflatten(0, (t, b))
        assert membrane.dtype == torch.bfloat16
        spikes = lif(membrane)
    assert spikes.dtype == torch.bfloat16
    assert spikes.shape == membrane.shape
    # Same spikes as the float32 computation on the (exactly widened) bfloat16 membrane.
    expected = multistep_lif(membrane.detach().float(), backend="torch")
    assert torch.equal(spikes.float(), expected)
    assert 0 < expected.mean() < 1
    (spikes.float() * torch.randn(spikes.shape)).sum().backward()
    assert conv.weight.grad.dtype == torch.float32
    assert torch.isfinite(conv.weight.grad).all() and conv.weight.grad.abs().sum() > 0


def _base(*shape):
    return randn(*shape) * 2 + 1


NON_CONTIGUOUS = {
    # name: builds a non-contiguous [T, B, C] view
    "transposed": lambda: _base(5, 7, 3).transpose(1, 2),
    "sliced": lambda: _base(5, 3, 14)[:, :, ::2],
    "time-strided": lambda: _base(10, 3, 7)[::2],
    "batch-major": lambda: _base(3, 5, 7).transpose(0, 1),
    "expanded": lambda: _base(5, 1, 7).expand(5, 3, 7),
}


@pytest.mark.parametrize("kind", ["lif", "plif", "if"])
@pytest.mark.parametrize("layout", list(NON_CONTIGUOUS))
def test_non_contiguous_input_matches_contiguous(layout, kind):
    x = NON_CONTIGUOUS[layout]()
    assert not x.is_contiguous()
    grad_spikes = randn(*x.shape, seed=3)
    v_init = randn(*x.shape[1:], seed=4)
    neuron = make(kind)
    spikes, v_final, grad = forward_backward(neuron, x, grad_spikes, v_init=v_init)
    spikes_c, v_final_c, grad_c = forward_backward(
        neuron, x.contiguous(), grad_spikes, v_init=v_init
    )
    assert 0 < spikes_c.mean() < 1
    assert torch.equal(spikes, spikes_c)
    assert torch.equal(v_final, v_final_c)
    torch.testing.assert_close(grad, grad_c, rtol=1e-6, atol=1e-7)


def _channels_last_5d(t=3, b=2, c=4, h=5, w=6, seed=0):
    """A [T*B, C, H, W] channels_last tensor unflattened to [T, B, C, H, W]."""
    flat = (randn(t * b, c, h, w, seed=seed) * 2 + 1).contiguous(memory_format=torch.channels_last)
    x = flat.unflatten(0, (t, b))
    assert not x.is_contiguous()
    assert x[0].is_contiguous(memory_format=torch.channels_last)
    return x


@pytest.mark.parametrize("kind", ["lif", "plif", "if"])
def test_channels_last_5d(kind):
    x = _channels_last_5d()
    grad_spikes = randn(*x.shape, seed=5)
    v_init = randn(*x.shape[1:], seed=6).contiguous(memory_format=torch.channels_last)
    neuron = make(kind)
    spikes, v_final, grad = forward_backward(neuron, x, grad_spikes, v_init=v_init)
    spikes_c, v_final_c, grad_c = forward_backward(
        neuron, x.contiguous(), grad_spikes, v_init=v_init.contiguous()
    )
    assert 0 < spikes_c.mean() < 1
    assert torch.equal(spikes, spikes_c)
    assert torch.equal(v_final, v_final_c)
    torch.testing.assert_close(grad, grad_c, rtol=1e-6, atol=1e-7)
    # The layout survives: spikes (and the final membrane) come back channels-last, without a copy.
    assert spikes.stride() == x.stride()
    assert v_final.stride() == x[0].stride()
    assert grad.stride() == x.stride()
    # The next layer can fold time back into the batch as a channels_last tensor.
    assert spikes.flatten(0, 1).is_contiguous(memory_format=torch.channels_last)


def test_channels_last_input_with_contiguous_v_init():
    x = _channels_last_5d(seed=7)
    v_init = randn(*x.shape[1:], seed=8)  # contiguous, unlike x
    spikes, v_final = multistep_lif(x, v_init=v_init, return_state=True, backend="torch")
    spikes_c, v_final_c = multistep_lif(
        x.contiguous(), v_init=v_init, return_state=True, backend="torch"
    )
    assert torch.equal(spikes, spikes_c)
    assert torch.equal(v_final, v_final_c)


def _compare_compiled(net: nn.Module, x: torch.Tensor, compiled: nn.Module, rtol, atol):
    out_compiled = compiled(x)
    (
        out_compiled * torch.linspace(-1, 2, out_compiled.numel()).view_as(out_compiled)
    ).sum().backward()
    grads_compiled = {n: p.grad.clone() for n, p in net.named_parameters()}
    net.zero_grad()
    set_backend(net, "torch")  # the reference: eager loops (no compile of "auto" here)
    out_eager = net(x)
    (out_eager * torch.linspace(-1, 2, out_eager.numel()).view_as(out_eager)).sum().backward()

    assert 0 < out_eager.mean() < 1
    assert out_compiled.dtype == out_eager.dtype
    assert torch.equal(out_compiled, out_eager)
    for name, p in net.named_parameters():
        assert p.grad.abs().sum() > 0, name
        torch.testing.assert_close(grads_compiled[name], p.grad, rtol=rtol, atol=atol, msg=name)


def _dyadic_(net: nn.Module, seed: int) -> nn.Module:
    """Set every parameter to multiples of 1/8 in [-1, 1], in place.

    With dyadic inputs too, every product and sum of the layers below is exact in float32 and
    float64, in any summation order, with or without fused multiply-adds; so is the LIF update
    with ``tau`` a power of two. The membranes, and with them the spikes (ties included), are
    then the same on every machine and for every compiled kernel.
    """
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(torch.randint(-8, 9, p.shape, generator=gen) / 8)
    return net


def _dyadic_input(*shape: int, dtype=torch.float32) -> torch.Tensor:
    """Multiples of 1/4 in [-3, 3]."""
    gen = torch.Generator().manual_seed(11)
    return (torch.randint(-12, 13, shape, generator=gen) / 4).to(dtype)


@pytest.mark.slow  # inductor compiles a model (seconds)
def test_torch_compile_of_a_model_matches_eager():
    """The default (inductor) torch.compile of a model with a neuron on its default backend."""
    net = _dyadic_(nn.Sequential(nn.Linear(5, 6), MultiStepLIF()), seed=0)
    x = _dyadic_input(3, 4, 5)
    _compare_compiled(net, x, torch.compile(net, fullgraph=True), rtol=1e-5, atol=1e-6)


def test_torch_compile_traces_every_neuron_kind_without_graph_breaks():
    """Dynamo + AOTAutograd (the compiler front end, no code generation: cheap) on all kinds,
    including PLIF's learned decay, soft reset and an attached reset."""
    net = nn.Sequential(
        nn.Linear(5, 6),
        MultiStepLIF(tau=4.0, v_reset=None),
        nn.Linear(6, 6),
        MultiStepIF(v_reset=-0.2, surrogate="atan"),
        nn.Linear(6, 4),
        MultiStepPLIF(surrogate="atan", detach_reset=False),
    ).double()
    _dyadic_(net, seed=1)
    with torch.no_grad():
        net[5].w.zero_()  # PLIF decay sigmoid(0) = 1/2: exact
        net[2].bias += 0.5
        net[4].bias += 2.0
    x = _dyadic_input(3, 4, 5, dtype=torch.float64)
    compiled = torch.compile(net, backend="aot_eager", fullgraph=True)
    _compare_compiled(net, x, compiled, rtol=1e-12, atol=1e-14)


def test_a_traced_neuron_runs_on_its_input_as_shaped():
    """Under torch.compile the loops see ``x [T, B, C, H, W]`` as it is: no reshape or permute
    fixes the memory order of the neurons, so the compiler keeps a convolution's channels-last
    output in its layout and vectorises the neuron over it."""
    graphs = []

    def record(gm: torch.fx.GraphModule, example_inputs):
        graphs.append(gm)
        return gm.forward

    neuron = MultiStepLIF(tau=2.0)
    x = _channels_last_5d()
    compiled = torch.compile(neuron, backend=record, fullgraph=True)
    with torch.no_grad():
        assert torch.equal(compiled(x), MultiStepLIF(tau=2.0, backend="torch")(x))
    reshaping = {"reshape", "view", "permute", "flatten", "contiguous", "unflatten"}
    called = {str(node.target) for graph in graphs for node in graph.graph.nodes}
    assert called.isdisjoint(reshaping), called & reshaping


class _ConvBatchNormNeuron(nn.Module):
    """``LIF(BN(conv(x)))`` over ``x [T, B, C, H, W]``, as spikezoo's layers run it."""

    def __init__(self) -> None:
        super().__init__()
        self.conv, self.bn = nn.Conv2d(8, 32, 1), nn.BatchNorm2d(32)
        self.neuron = MultiStepLIF(tau=2.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.neuron(per_step(self.bn, per_step(self.conv, x)))


@pytest.mark.slow  # inductor compiles a model (seconds)
def test_under_compile_the_batch_norm_before_a_neuron_is_computed_in_its_kernel():
    """The loops take the steps of ``x`` as unbound views: inductor then computes the
    BatchNorm's affine map inside the neuron's kernel, reading the convolution's output once.
    Indexed step by step, it wrote the normalised output first, over the convolution's output
    (an ``in_out_ptr`` buffer), and read it back: a pass more, 4 % of a compiled
    ``sdt_2_512_cifar`` call."""
    from torch._inductor.graph import GraphLowering

    net = _ConvBatchNormNeuron().eval()
    x = randn(4, 2, 8, 6, 6, seed=9)
    sources = []
    with (
        mock.patch.object(GraphLowering, "save_output_code", sources.append),
        torch._inductor.config.patch(fx_graph_cache=False),
        torch.no_grad(),
    ):
        assert torch.compile(net, dynamic=False)(x).shape == (4, 2, 32, 6, 6)
    kernels = [code for source in sources for code in source.split('extern "C"')[1:]]
    normalising = [kernel for kernel in kernels if "rsqrt" in kernel]  # BatchNorm's (var+eps)
    assert len(normalising) == 1, kernels
    assert "in_out_ptr" not in normalising[0]
    assert "!=" in normalising[0]  # the neuron's NaN check: the same kernel


@pytest.mark.parametrize("kind", ["lif", "plif", "if"])
def test_a_compiled_neuron_with_v_init_returns_the_eager_state(kind):
    x = _channels_last_5d(seed=3)
    v_init = randn(*x.shape[1:], seed=4)
    neuron = make(kind)
    expected = forward_backward(neuron, x, randn(*x.shape, seed=5), v_init=v_init)
    compiled = torch.compile(neuron, backend="aot_eager", fullgraph=True)
    got = forward_backward(compiled, x, randn(*x.shape, seed=5), v_init=v_init)
    assert got[1].shape == x.shape[1:]
    for value, reference in zip(got, expected, strict=True):
        torch.testing.assert_close(value, reference, rtol=1e-6, atol=1e-6)


def test_neurons_of_other_thresholds_compile_one_after_another():
    """Recompiling the neurons' shared forward for another threshold makes dynamo trace the
    thresholds as symbolic floats; the argument checks must trace them too (fullgraph)."""
    torch._dynamo.reset()
    x = _channels_last_5d(seed=6)
    for neuron in (MultiStepLIF(tau=1.5), MultiStepIF(v_threshold=1.25), MultiStepLIF(tau=4.0)):
        set_backend(neuron, "torch")
        compiled = torch.compile(neuron, backend="aot_eager", fullgraph=True)
        assert torch.equal(compiled(x), neuron(x))


@pytest.mark.parametrize(
    "kind,backend",
    [
        *((kind, "torch") for kind in ("lif", "plif", "if")),
        # each compiles graphs of its own (seconds): the slow step checks them
        *(pytest.param(kind, "inductor", marks=pytest.mark.slow) for kind in ("lif", "plif", "if")),
    ],
)
def test_input_gradient_is_the_backward_of_the_forward_pass(kind, backend):
    """``input_gradient`` (no forward pass, membranes recharged from ``x``) gives autograd's
    gradients of ``neuron(x)`` bit for bit, in the input's layout."""
    neuron = make(kind, backend=backend)
    x = _channels_last_5d(seed=7).requires_grad_()
    grad_spikes = randn(*x.shape, seed=8)
    neuron(x).backward(grad_spikes)
    grad_x, param_grads = neuron.input_gradient(x.detach(), grad_spikes)
    assert grad_x.stride() == x.grad.stride() and torch.equal(grad_x, x.grad)
    for param, grad in zip(neuron.parameters(), param_grads, strict=True):
        assert torch.equal(grad, param.grad)


@pytest.mark.parametrize("with_v_init", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("kind", ["lif", "plif", "if"])
def test_one_forward_saves_one_membrane_tensor_per_step(kind, dtype, with_v_init):
    """BPTT keeps only h[t] per step: T*N saved elements (+ N for v_init, + scalars)."""
    x = _channels_last_5d() if dtype == torch.float32 else randn(4, 2, 3, 5).to(dtype)
    x.requires_grad_()
    n = x[0].numel()
    v_init = randn(*x.shape[1:], seed=9).requires_grad_() if with_v_init else None
    neuron = make(kind)
    saved = []

    def pack(tensor):
        saved.append(tensor)
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        spikes = neuron(x, v_init=v_init)
    large = [s for s in saved if s.numel() > 1]
    small = [s for s in saved if s.numel() <= 1]
    assert sum(s.numel() for s in large) == x.numel() + (n if with_v_init else 0)
    assert len(small) <= 3
    assert not any(s.data_ptr() == spikes.data_ptr() for s in large)  # spikes are not kept
    spikes.sum().backward()  # and what was saved suffices for the backward
    assert x.grad is not None and x.grad.shape == x.shape


@pytest.mark.parametrize(
    "backend",
    ["torch", pytest.param("inductor", marks=pytest.mark.slow)],  # inductor: seconds
)
def test_inference_path_matches_the_training_path(backend):
    """Without autograd the loops keep no membranes for backward, and compute the same thing."""
    x = torch.randn(3, 4, 5) * 2
    with torch.no_grad():
        spikes, v_final = multistep_lif(x, backend=backend, return_state=True)
    trained, v_trained = multistep_lif(
        x.clone().requires_grad_(), backend=backend, return_state=True
    )
    assert not spikes.requires_grad
    assert torch.equal(spikes, trained.detach())
    assert torch.equal(v_final, v_trained.detach())
