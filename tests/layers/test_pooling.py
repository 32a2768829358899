"""Max-pooling that saves window offsets: the outputs and gradients of ``nn.MaxPool2d``, bit for
bit, and fewer bytes saved for backward; in every family that max-pools, the same logits and
gradients as with ``nn.MaxPool2d``, in float64."""

from __future__ import annotations

import copy
import logging

import pytest
import torch
from torch import nn
from torch.nn.modules.utils import _pair
from torch.utils._python_dispatch import TorchDispatchMode

from spikezoo.analysis import measure_saved_tensors
from spikezoo.layers import MaxPool2d, max_pool2d, pooling
from spikezoo.neurons import MultiStepLIF, compact_saved_spikes, marked_as_spikes, set_backend
from tests.models.families import FAMILY_NAMES, tiny, tiny_family

WINDOWS = [
    # (kernel, stride, padding): the models' 3x3 stride-2 pad-1 pool, SDSA's dilation, others
    (3, 2, 1),
    (3, 1, 1),
    (2, 2, 0),
    ((3, 2), (2, 1), (1, 0)),
]


class OpsRecorded(TorchDispatchMode):
    """The names of the ATen operations run inside the block."""

    def __enter__(self):
        self.names = []
        super().__enter__()
        return self.names

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.names.append(func.name())
        return func(*args, **(kwargs or {}))


class PoolingInputs(TorchDispatchMode):
    """The inputs of the max-pool forward kernels run inside the block."""

    def __enter__(self):
        self.inputs = []
        super().__enter__()
        return self.inputs

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func is torch.ops.aten.max_pool2d_with_indices.default:
            self.inputs.append(args[0])
        return func(*args, **(kwargs or {}))


def _grads(pool, x: torch.Tensor, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    leaf = x.clone().requires_grad_()
    out = pool(leaf)
    grad = torch.randn(out.shape, dtype=out.dtype, generator=torch.Generator().manual_seed(seed))
    out.backward(grad)
    return out.detach(), leaf.grad


@pytest.mark.parametrize("window", WINDOWS, ids=str)
@pytest.mark.parametrize("shape", [(2, 3, 9, 11), (4, 7, 10), (1, 2, 5, 70)], ids=str)
def test_max_pool_equals_torch_bit_for_bit(window, shape):
    torch.manual_seed(0)
    # ties (spikes, and repeated values) exercise which maximum the indices point at
    x = torch.randint(0, 3, shape).double() * torch.randn(shape[-1], dtype=torch.float64).sign()
    expected = _grads(nn.MaxPool2d(*window), x)
    got = _grads(MaxPool2d(*window), x)
    assert torch.equal(got[0], expected[0])
    assert torch.equal(got[1], expected[1])
    functional = _grads(lambda t: max_pool2d(t, *window), x)
    assert torch.equal(functional[1], expected[1])


@pytest.mark.parametrize("layout", [torch.contiguous_format, torch.channels_last], ids=str)
@pytest.mark.parametrize("window", WINDOWS, ids=str)
def test_many_channels_pool_a_channels_last_copy_with_the_same_indices(window, layout):
    """From ``_CHANNELS_LAST_FROM`` channels on, the training forward runs PyTorch's
    channels-last kernel: ties, NaN and infinities pick the maxima NCHW's kernel picks, and the
    output keeps the input's layout."""
    channels = pooling._CHANNELS_LAST_FROM
    gen = torch.Generator().manual_seed(2)
    x = torch.randint(0, 3, (2, channels, 9, 11), generator=gen).double()
    x[0, 1, 2, 3] = x[1, 5, 4, 4] = float("nan")
    x[0, 2, 0, 0], x[1, 3, 8, 10] = float("inf"), float("-inf")
    x = x.contiguous(memory_format=layout)
    expected = _grads(nn.MaxPool2d(*window), x)
    with PoolingInputs() as pooled_inputs:
        got = _grads(MaxPool2d(*window), x)
    assert [t.is_contiguous(memory_format=torch.channels_last) for t in pooled_inputs] == [True]
    assert got[0].stride() == expected[0].stride()
    for value, reference in zip(got, expected, strict=True):  # NaN where torch has NaN
        assert torch.equal(value.nan_to_num(7.0), reference.nan_to_num(7.0))
        assert torch.equal(value.isnan(), reference.isnan())


@pytest.mark.parametrize(("width", "dtype"), [(62, torch.int8), (63, torch.int16)])
def test_only_the_offsets_are_saved(width, dtype):
    x = torch.rand(2, 4, 6, width, requires_grad=True)
    report = measure_saved_tensors(MaxPool2d(3, 2, 1), x)
    (saved,) = report.tensors  # neither the input (alive anyway here) nor int64 indices
    assert saved.dtype == str(dtype).removeprefix("torch.")
    assert saved.shape == (2, 4, 3, (width + 1) // 2)
    plain = measure_saved_tensors(nn.MaxPool2d(3, 2, 1), x)
    assert [t.dtype for t in plain.tensors] == ["int64"]


@pytest.mark.parametrize("window", [*WINDOWS, (1, 1, 0), (4, 3, 1), (3, 5, 0)], ids=str)
@pytest.mark.parametrize("shape", [(2, 3, 9, 11), (4, 7, 10), (1, 2, 5, 70), (1, 1, 3, 3)], ids=str)
def test_without_gradients_the_separable_max_equals_torch_and_computes_no_index(window, shape):
    torch.manual_seed(0)
    x = torch.randn(shape, dtype=torch.float64)
    x[..., 1, 2] = float("nan")  # propagates as in PyTorch's kernel
    x[..., -1, :2] = float("inf")
    expected = nn.functional.max_pool2d(x, *window)
    with OpsRecorded() as ops, torch.no_grad():
        got = max_pool2d(x.requires_grad_(), *window)
    assert torch.equal(got.isnan(), expected.isnan())
    assert torch.equal(got.nan_to_num(), expected.nan_to_num())
    assert ops and not any("max_pool" in op for op in ops)  # the recorder saw operations
    spikes = (x.detach() > 0.5).float()  # and on spikes, with a gradient-free input
    assert torch.equal(MaxPool2d(*window)(spikes), nn.functional.max_pool2d(spikes, *window))


def test_an_impossible_window_without_gradients_is_worded_by_torch():
    with pytest.raises(RuntimeError, match="pad should be at most half"):
        max_pool2d(torch.ones(1, 1, 4, 4), 2, 1, 2)
    with pytest.raises(RuntimeError, match="too small"):
        max_pool2d(torch.ones(1, 1, 2, 2), 5, 1, 0)


def test_without_gradients_it_is_nn_max_pool():
    x = torch.randn(2, 3, 8, 8, requires_grad=True)
    with torch.no_grad():
        assert MaxPool2d(3, 2, 1)(x).grad_fn is None
    assert type(MaxPool2d(3, 2, 1)(x.detach()).grad_fn).__name__ == "NoneType"
    assert type(MaxPool2d(3, 2, 1)(x).grad_fn).__name__ == "_MaxPool2dOffsetsBackward"
    dilated = MaxPool2d(3, 2, 1, dilation=2)(x)
    assert type(dilated.grad_fn).__name__ == "MaxPool2DWithIndicesBackward0"


def _with_torch_pools(model: nn.Module) -> nn.Module:
    """A copy of ``model`` whose every :class:`MaxPool2d` is an ``nn.MaxPool2d``."""
    plain = copy.deepcopy(model)
    for module in plain.modules():
        for name, child in module.named_children():
            if isinstance(child, MaxPool2d):
                setattr(module, name, nn.MaxPool2d(child.kernel_size, child.stride, child.padding))
    return plain


def _step(model: nn.Module, images: torch.Tensor) -> tuple[torch.Tensor, dict]:
    logits = model(images)
    logits.square().sum().backward()
    return logits.detach(), {n: p.grad for n, p in model.named_parameters()}


def _max_pools(model: nn.Module) -> bool:
    return any(isinstance(m, MaxPool2d) for m in model.modules())


def _families_that_max_pool() -> list[str]:
    with torch.device("meta"):
        return [family for family in FAMILY_NAMES if _max_pools(tiny(family))]


MAX_POOLING_FAMILIES = _families_that_max_pool()


def test_the_families_with_the_papers_max_pools_are_tested():
    assert {"spike_driven_transformer", "qkformer"} <= set(MAX_POOLING_FAMILIES)


@pytest.mark.parametrize("family", MAX_POOLING_FAMILIES)
def test_models_that_max_pool_train_as_with_torch_pools(family):
    torch.manual_seed(0)
    shallow = tiny_family(family).shallow or {}
    model = set_backend(tiny(family, **shallow), "torch").double().train()
    plain = _with_torch_pools(model)
    channels = model.pretrained_cfg["input_size"][0]
    images = torch.randn(2, channels, 16, 16, dtype=torch.float64)
    logits, grads = _step(model, images)
    expected_logits, expected_grads = _step(plain, images)
    assert torch.equal(logits, expected_logits)
    assert grads.keys() == expected_grads.keys()
    for name, grad in grads.items():
        assert (grad is None) == (expected_grads[name] is None), name
        if grad is not None:
            assert torch.equal(grad, expected_grads[name]), name


def test_the_max_pool_of_marked_spikes_is_marked_and_of_anything_else_not():
    with compact_saved_spikes():
        spikes = MultiStepLIF(backend="torch")(torch.randn(2, 4, 8, 8, requires_grad=True) * 2)
        assert marked_as_spikes(max_pool2d(spikes, 3, 2, 1))
        assert not marked_as_spikes(max_pool2d(spikes * 2, 3, 2, 1))


def _bits(t: torch.Tensor) -> torch.Tensor:
    return t.view(torch.int32)


def _awkward_float32(shape, seed: int) -> torch.Tensor:
    """Ties (spikes and repeated values), NaN, infinities, negative values and a ``-inf``-only
    window region: every rule of which maximum a window picks."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randint(-2, 3, shape, generator=gen).float()
    x.view(-1, *shape[-2:])[0] = x.view(-1, *shape[-2:])[0] > 0  # a plane of spikes
    flat = x.view(-1)
    picks = torch.randint(0, flat.numel(), (4 * len(flat) // 50 + 3,), generator=gen)
    flat[picks[0::3]] = float("nan")
    flat[picks[1::3]] = float("inf")
    flat[picks[2::3]] = float("-inf")
    x.view(-1, *shape[-2:])[-1, :3, :3] = float("-inf")
    return x


@pytest.mark.parametrize("window", [*WINDOWS, (4, 3, 1), (3, 5, 0)], ids=str)
@pytest.mark.parametrize(
    "shape", [(2, 3, 9, 11), (4, 7, 10), (1, 2, 5, 70), (2, 66, 9, 90)], ids=str
)
def test_the_c_kernel_pools_as_torch_bit_for_bit(window, shape, monkeypatch):
    """float32 on the CPU: forward and backward from the C kernel, no PyTorch max-pool kernel;
    the maxima (NaN included), the offsets saved and the gradients are nn.MaxPool2d's bits."""
    assert pooling._kernel() is not None  # built and probed
    ran = []
    for name in ("_pool_by_kernel", "_unpool_by_kernel"):
        real = getattr(pooling, name)
        monkeypatch.setattr(
            pooling, name, lambda *a, real=real, name=name: ran.append(name) or real(*a)
        )
    x = _awkward_float32(shape, seed=3)
    expected = _grads(nn.MaxPool2d(*window), x)
    with OpsRecorded() as names:
        got = _grads(MaxPool2d(*window), x)
    assert ran == ["_pool_by_kernel", "_unpool_by_kernel"]
    assert not [n for n in names if "max_pool" in n]
    assert got[0].isnan().any() and torch.equal(_bits(got[0]), _bits(expected[0]))
    assert torch.equal(_bits(got[1]), _bits(expected[1]))


@pytest.mark.parametrize("window", [*WINDOWS, (4, 3, 1), (3, 5, 0)], ids=str)
@pytest.mark.parametrize("width", [70, 30], ids=lambda w: f"width{w}")
def test_the_c_kernel_without_offsets_gives_torchs_maxima(window, width):
    """The kernel's loop without offsets (inference), compiled apart for stride 1, for stride
    2 on wide rows (35 outputs of 70 columns; 15 of 30 take the general loop) and for any
    other stride, finds PyTorch's maxima, bit for bit."""
    kernels = pooling._kernel()
    assert kernels is not None  # built and probed
    kernel, stride, padding = (_pair(v) for v in window)
    x = _awkward_float32((2, 3, 9, width), seed=5)
    pooled, offsets = pooling._pool_by_kernel(kernels, x, kernel, stride, padding, False)
    assert offsets is None
    expected = nn.functional.max_pool2d(x, kernel, stride, padding)
    assert expected.isnan().any() and torch.equal(_bits(pooled), _bits(expected))


def test_short_rows_of_many_channels_pool_with_torch_and_go_back_with_the_kernel(monkeypatch):
    """Below ``_KERNEL_FROM_WIDTH`` output columns and from ``_CHANNELS_LAST_FROM`` channels on,
    PyTorch's channels-last forward is the faster and runs; backward takes the C kernel."""
    ran = []
    real = pooling._unpool_by_kernel
    monkeypatch.setattr(pooling, "_unpool_by_kernel", lambda *a: ran.append(1) or real(*a))
    width = 2 * pooling._KERNEL_FROM_WIDTH - 2  # 15 output columns with (3, 2, 1)
    x = _awkward_float32((2, pooling._CHANNELS_LAST_FROM, 7, width), seed=4)
    expected = _grads(nn.MaxPool2d(3, 2, 1), x)
    with PoolingInputs() as pooled_inputs:
        got = _grads(MaxPool2d(3, 2, 1), x)
    assert [t.is_contiguous(memory_format=torch.channels_last) for t in pooled_inputs] == [True]
    assert ran == [1]
    for value, reference in zip(got, expected, strict=True):
        assert torch.equal(_bits(value), _bits(reference))


def test_a_channels_last_input_with_a_contiguous_gradient_goes_back_as_torchs():
    """A channels-last input pools with PyTorch's kernel, whose offsets follow its layout: a
    row-major gradient must not be routed by them as if they were row-major too."""
    x = _awkward_float32((2, 3, 9, 11), seed=8).contiguous(memory_format=torch.channels_last)
    leaf, reference = x.clone().requires_grad_(), x.clone().requires_grad_()
    out = MaxPool2d(3, 2, 1)(leaf)
    grad = torch.randn(out.shape, generator=torch.Generator().manual_seed(9))  # row-major
    out.backward(grad)
    nn.MaxPool2d(3, 2, 1)(reference).backward(grad)
    assert torch.equal(_bits(leaf.grad), _bits(reference.grad))


@pytest.mark.parametrize(
    ("window", "message"),
    [((3, 2, 2), "pad should be at most half"), ((5, 1, 0), "Output size is too small")],
)
def test_an_impossible_window_in_training_is_worded_by_torch(window, message):
    """The C kernel takes valid windows only: PyTorch's kernel says what is wrong with others
    (the kernel would have pooled nothing, or written outside the input in backward)."""
    x = torch.randn(1, 2, 4, 4, requires_grad=True)
    with pytest.raises(RuntimeError, match=message):
        max_pool2d(x, *window)


def test_a_window_half_in_the_padding_trains_as_torch():
    x = _awkward_float32((2, 3, 8, 10), seed=10)
    expected, got = _grads(nn.MaxPool2d(2, 2, 1), x), _grads(MaxPool2d(2, 2, 1), x)
    for value, reference in zip(got, expected, strict=True):
        assert torch.equal(_bits(value), _bits(reference))


def test_a_strided_gradient_goes_back_with_torchs_kernel():
    x = _awkward_float32((2, 3, 9, 11), seed=5)
    leaf, reference = x.clone().requires_grad_(), x.clone().requires_grad_()
    out = MaxPool2d(3, 2, 1)(leaf)
    grad = torch.randn(out.shape[::-1]).permute(3, 2, 1, 0)  # same shape, not contiguous
    with OpsRecorded() as names:
        out.backward(grad)
    assert "aten::max_pool2d_with_indices_backward" in names
    nn.MaxPool2d(3, 2, 1)(reference).backward(grad)
    assert torch.equal(_bits(leaf.grad), _bits(reference.grad))


@pytest.mark.parametrize("wrong", ["maxima", "maxima without offsets", "offsets", "gradient"])
def test_a_c_kernel_unequal_to_torchs_is_not_used(wrong, monkeypatch, caplog):
    pool, unpool = pooling._pool_by_kernel, pooling._unpool_by_kernel

    def pool_off(*args):
        pooled, offsets = pool(*args)
        if wrong == "maxima" or (wrong == "maxima without offsets" and offsets is None):
            pooled = torch.nextafter(pooled, torch.full_like(pooled, float("inf")))
        elif wrong == "offsets" and offsets is not None:
            offsets = offsets.flip(-1)
        return pooled, offsets

    def unpool_off(*args):
        grad = unpool(*args)
        return grad * 2 if wrong == "gradient" else grad

    monkeypatch.setattr(pooling, "_pool_by_kernel", pool_off)
    monkeypatch.setattr(pooling, "_unpool_by_kernel", unpool_off)
    pooling._kernel.cache_clear()
    try:
        with caplog.at_level(logging.WARNING, logger="spikezoo.layers.pooling"):
            assert pooling._kernel() is None
        assert "differs from PyTorch" in caplog.text
        x = _awkward_float32((2, 3, 9, 11), seed=6)
        got, expected = _grads(MaxPool2d(3, 2, 1), x), _grads(nn.MaxPool2d(3, 2, 1), x)
        assert torch.equal(_bits(got[1]), _bits(expected[1]))  # PyTorch's kernels ran
    finally:
        pooling._kernel.cache_clear()


@pytest.mark.parametrize(
    "out_width",
    [pooling._KERNEL_WITHOUT_GRAD_FROM_WIDTH - 1, pooling._KERNEL_WITHOUT_GRAD_FROM_WIDTH],
)
def test_without_gradients_wide_rows_pool_with_the_c_kernel(out_width, monkeypatch):
    assert pooling._kernel() is not None  # built and probed before the spy goes in
    ran = []
    real = pooling._pool_by_kernel
    monkeypatch.setattr(pooling, "_pool_by_kernel", lambda *a, **k: ran.append(k) or real(*a, **k))
    x = _awkward_float32((2, 3, 7, 2 * out_width), seed=7)
    with torch.no_grad():
        got = max_pool2d(x, 3, 2, 1)
    wide = out_width >= pooling._KERNEL_WITHOUT_GRAD_FROM_WIDTH
    assert ran == ([{"with_offsets": False}] if wide else [])
    expected = nn.functional.max_pool2d(x, 3, 2, 1)
    if wide:  # PyTorch's values, bit for bit
        assert torch.equal(_bits(got), _bits(expected))
    else:  # the separable maximum: the same values, NaN where PyTorch's NaN is
        assert torch.equal(got.nan_to_num(7.0), expected.nan_to_num(7.0))
        assert torch.equal(got.isnan(), expected.isnan())


def test_a_row_of_offsets_without_memory_is_a_memory_error_and_writes_nothing():
    """The C kernel reports a thread's failed allocation of its row of offsets (here a row of
    2**61 outputs: a request no allocator grants), writes none of that thread's rows, and the
    caller raises instead of returning a half-written output."""
    kernels = pooling._kernel()
    x, out = torch.zeros(1, 4, 4), torch.full((1, 1, 4), 7.0)
    failed = kernels.forward(
        x.data_ptr(), 1, 4, 4, 3, 3, 2, 2, 1, 1, 1, 2**61, out.data_ptr(), x.data_ptr(), 4, 1
    )
    assert failed == 1 and torch.equal(out, torch.full((1, 1, 4), 7.0))
    fake = pooling._Kernels(lambda *args: 1, kernels.backward)
    with pytest.raises(MemoryError, match=r"max-pooling \(1, 2, 8, 8\): no memory for a row of 4"):
        pooling._pool_by_kernel(fake, torch.rand(1, 2, 8, 8), (3, 3), (2, 2), (1, 1))
