"""Max-pooling that saves window offsets: the outputs and gradients of ``nn.MaxPool2d``, bit for
bit, and fewer bytes saved for backward; in every family that max-pools, the same logits and
gradients as with ``nn.MaxPool2d``, in float64."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn
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
