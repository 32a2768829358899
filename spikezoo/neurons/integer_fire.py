"""How an integer neuron fires: ``round(clamp(x, 0, levels)) / norm``, and its gradient window.

Two implementations of the same elementwise computation:

- PyTorch's operations (:func:`fire_by_pytorch`): clamp, a rounding from :data:`ROUNDINGS`
  and a division, three kernels, four in training (the window's mask), and two in backward,
  each a pass over the tensor and a dispatch of a few microseconds;
- a C kernel (``spikezoo/native/integer_neurons.c``, built once per machine by
  :mod:`spikezoo.native`) that reads the input once and writes the spikes, and the mask and
  the ``uint8`` counts where asked, and in backward ``grad / norm * mask`` in one pass: the
  same operations rounded as written, so the same bits, NaN, infinities and ``-0.0``
  included. E-SpikeFormer's neurons see a few thousand values each, where the dispatch is
  most of the time (2 idle cores, the forward without gradients: ``[1, 1, 96, 8, 8]``
  10 -> 5 us, ``[1, 1, 48, 64, 64]`` 46 -> 17 us).

:func:`fire` and :func:`backward` take the kernel for contiguous float32 CPU tensors outside
``torch.compile`` and tracing, once it has given PyTorch's results bit for bit on a probe
(:func:`_reproduces_pytorch`, once per process); everywhere else, and where no C compiler
builds it, PyTorch's operations run.
"""

from __future__ import annotations

import ctypes
import functools
import logging
import math
from collections.abc import Callable
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

from spikezoo import native
from spikezoo.native import pointer, threads
from spikezoo.neurons.backends.native import Normalisation

__all__ = [
    "GRADIENT_WINDOWS",
    "ROUNDINGS",
    "backward",
    "fire",
    "fire_by_pytorch",
    "fire_normalised",
    "reads_normalisation",
]

_log = logging.getLogger(__name__)

#: Rounding of the clamped input to an integer count, in place, by name:
#: ``"half_even"`` is ``torch.round`` (E-SpikeFormer's base models), ``"half_up"`` is
#: ``floor(x + 0.5)`` (its large models). They differ only at ``x = k + 0.5`` for even ``k``.
ROUNDINGS: dict[str, Callable[[Tensor], Tensor]] = {
    "half_even": Tensor.round_,
    "half_up": lambda x: x.add_(0.5).floor_(),
}

#: Where the straight-through gradient passes, by name: ``"closed"`` on ``0 <= x <= D`` (the
#: base models' ``Quant``), ``"open"`` on ``0 < x < D`` (the large models' ``multispike``).
GRADIENT_WINDOWS = ("closed", "open")

Fired = tuple[Tensor, Tensor | None, Tensor | None]


def fire_by_pytorch(
    x: Tensor, levels: int, norm: float, rounding: str, window: str, with_mask: bool,
    with_counts: bool,
) -> Fired:  # fmt: skip
    """``(spikes, inside, counts)`` for ``x [...]`` by PyTorch's operations: the spikes
    ``round(clamp(x, 0, levels)) / norm``, the bool mask of the gradient window and the
    ``uint8`` counts, each ``[...]``; the last two ``None`` unless asked for."""
    clamped = x.clamp(0, levels)
    inside = None
    if with_mask:
        # clamp leaves x unchanged exactly where 0 <= x <= levels (NaN compares unequal)
        inside = clamped == x if window == "closed" else (x > 0) & (x < levels)
    rounded = ROUNDINGS[rounding](clamped)
    counts = rounded.to(torch.uint8) if with_counts else None
    return rounded.div_(norm), inside, counts


class _Kernels(NamedTuple):
    fire: native.Kernel
    backward: native.Kernel
    fire_normalised: native.Kernel


def _fire_by_kernel(
    kernels: _Kernels, x: Tensor, levels: int, norm: float, rounding: str, window: str,
    with_mask: bool, with_counts: bool,
) -> Fired:  # fmt: skip
    spikes = torch.empty_like(x)
    inside = torch.empty_like(x, dtype=torch.bool) if with_mask else None
    counts = torch.empty_like(x, dtype=torch.uint8) if with_counts else None
    kernels.fire(
        x.data_ptr(), x.numel(), levels, norm, rounding == "half_up", window == "open",
        spikes.data_ptr(), pointer(inside), pointer(counts), threads(x.numel()),
    )  # fmt: skip
    return spikes, inside, counts


def _backward_by_kernel(kernels: _Kernels, grad: Tensor, inside: Tensor, norm: float) -> Tensor:
    grad_x = torch.empty_like(grad)
    kernels.backward(
        grad.data_ptr(), inside.data_ptr(), grad.numel(), norm, grad_x.data_ptr(),
        threads(grad.numel()),
    )  # fmt: skip
    return grad_x


def _same_bits(a: Tensor, b: Tensor) -> bool:
    return torch.equal(a.view(torch.int32), b.view(torch.int32))


def _probe_input() -> Tensor:
    """Every quarter from -10 to 40 (ties at each half, the window's edges), NaN, infinities,
    ``-0.0``, the smallest subnormals and random values: more than one of the kernel's blocks
    and one thread's share."""
    x = torch.randn(40_000, generator=torch.Generator().manual_seed(0)) * 5
    x[:200] = torch.arange(200) * 0.25 - 10
    special = [float("nan"), float("inf"), -float("inf"), -0.0, 0.0, 1e-45, -1e-45, 0.49999997]
    x[200 : 200 + len(special)] = torch.tensor(special)
    return x


def _reproduces_pytorch(kernels: _Kernels) -> bool:
    """Whether ``kernels`` give :func:`fire_by_pytorch`'s spikes, masks and counts and
    PyTorch's ``grad / norm * inside`` bit for bit on a probe, for both roundings and windows,
    divided and power-of-two norms, on one thread and on as many as PyTorch has."""
    x = _probe_input()
    grad = torch.randn(x.shape, generator=torch.Generator().manual_seed(1))
    grad[:4] = torch.tensor([float("nan"), float("inf"), -0.0, -1e-40])
    for levels, norm in ((4, 4.0), (8, 8.0), (4, 1.0), (4, 3.0), (8, 0.7)):
        for rounding in ROUNDINGS:
            for window in GRADIENT_WINDOWS:
                for probe in (x, x[:1000]):
                    settings = (levels, norm, rounding, window)
                    spikes, inside, counts = _fire_by_kernel(kernels, probe, *settings, True, True)
                    alone = _fire_by_kernel(kernels, probe, *settings, False, False)[0]
                    expected = fire_by_pytorch(probe, *settings, True, True)
                    g = grad[: probe.numel()]
                    if not (
                        _same_bits(spikes, expected[0])
                        and _same_bits(alone, expected[0])
                        and torch.equal(inside, expected[1])
                        and torch.equal(counts, expected[2])
                        and _same_bits(
                            _backward_by_kernel(kernels, g, inside, norm), g / norm * inside
                        )
                    ):
                        return False
    return True


@functools.cache
def _kernel() -> _Kernels | None:
    """The C kernels, once they have given PyTorch's results bit for bit on a probe; else
    ``None``."""
    library = native.library("integer_neurons")
    if library is None:
        return None
    address, size, real, flag = ctypes.c_void_p, ctypes.c_int64, ctypes.c_float, ctypes.c_int
    kernels = _Kernels(
        native.kernel(
            library, "integer_fire_f32",
            [address, size, real, real, flag, flag, address, address, address, flag],
        ),
        native.kernel(
            library, "integer_backward_f32", [address, address, size, real, address, flag]
        ),
        native.kernel(
            library, "integer_fire_normalised_f32",
            [address, size, address, real, real, flag, address, flag],
        ),
    )  # fmt: skip
    if _reproduces_pytorch(kernels):
        return kernels
    _log.warning(
        "spikezoo: the C integer-neuron kernel differs from PyTorch %s's; PyTorch's operations "
        "run instead",
        torch.__version__,
    )
    return None


def _fire_normalised_by_kernel(
    kernels: _Kernels, x: Tensor, normalisation: Normalisation, levels: int, norm: float,
    rounding: str,
) -> Tensor:  # fmt: skip
    spikes = torch.empty_like(x)
    batch_norm = normalisation.as_struct()
    kernels.fire_normalised(
        x.data_ptr(), x.numel(), ctypes.addressof(batch_norm), levels, norm,
        rounding == "half_up", spikes.data_ptr(), threads(x.numel()),
    )  # fmt: skip
    return spikes


@functools.cache
def _map_reproduces_batch_norm(contract: bool) -> bool:
    """Whether the kernel, reading its input through BatchNorm's map (:class:`Normalisation`
    with ``contract``), fires on what PyTorch's BatchNorm computes in evaluation (``invstd =
    rsqrt(running_var + eps)``), bit for bit, on a probe: ``[T, B, C, H, W]`` and
    ``[T, B, C, N]`` of 19 channels, 35 values each, with and without BatchNorm's affine
    parameters, for E-SpikeFormer's neurons and for one that shows the map's every bit (2**24
    levels, norm 1, values mapped into ``[2**23, 2**24)``, where every float is a whole number
    that rounding keeps)."""
    kernels = _kernel()
    if kernels is None:
        return False
    generator = torch.Generator().manual_seed(0)
    cases = [  # (scale of x, running mean, levels, norm, rounding)
        (1.0e6, -1.2e7, 2**24, 1.0, "half_even"),
        (3.0, 0.5, 4, 4.0, "half_even"),
        (3.0, -1.0, 8, 1.0, "half_up"),
    ]
    for shape in [(1, 2, 19, 5, 7), (2, 1, 19, 35)]:
        for scale, centre, levels, norm, rounding in cases:
            x = torch.randn(shape, generator=generator) * scale
            mean = torch.randn(19, generator=generator) + centre
            var = torch.rand(19, generator=generator) * 0.4 + 0.8
            for affine in (True, False):
                weight = torch.rand(19, generator=generator) + 0.5 if affine else None
                bias = torch.randn(19, generator=generator) if affine else None
                invstd = torch.rsqrt(var + 1e-5)
                inner = math.prod(shape[3:])
                normalisation = Normalisation(weight, bias, mean, invstd, inner, contract)
                normalised = F.batch_norm(x.flatten(0, 1), mean, var, weight, bias, eps=1e-5)
                expected = fire_by_pytorch(
                    normalised.view(shape), levels, norm, rounding, "closed", False, False
                )[0]
                spikes = _fire_normalised_by_kernel(
                    kernels, x, normalisation, levels, norm, rounding
                )
                if not _same_bits(spikes, expected):
                    return False
    return True


def _kernel_for(*tensors: Tensor) -> _Kernels | None:
    """The kernels where they take every tensor given (contiguous CPU tensors, not subclasses,
    outside ``torch.compile`` and tracing; the callers check the dtypes); else ``None``."""
    if torch.compiler.is_compiling() or torch.jit.is_tracing():
        return None
    for t in tensors:
        if type(t) is not Tensor or not t.is_cpu or not t.is_contiguous():
            return None
    return _kernel()


def fire(
    x: Tensor, levels: int, norm: float, rounding: str, window: str, with_mask: bool,
    with_counts: bool,
) -> Fired:  # fmt: skip
    """:func:`fire_by_pytorch`, by the C kernel where it takes ``x`` (float32)."""
    kernels = _kernel_for(x) if x.dtype == torch.float32 else None
    if kernels is None:
        return fire_by_pytorch(x, levels, norm, rounding, window, with_mask, with_counts)
    return _fire_by_kernel(kernels, x, levels, norm, rounding, window, with_mask, with_counts)


def backward(grad: Tensor, inside: Tensor, norm: float) -> Tensor:
    """``grad / norm * inside`` for ``grad [...]`` and the bool window ``inside [...]``, by the
    C kernel where it takes both (``grad`` float32)."""
    same = grad.shape == inside.shape and grad.dtype == torch.float32
    kernels = _kernel_for(grad, inside) if same and inside.dtype == torch.bool else None
    if kernels is None:
        return grad / norm * inside
    return _backward_by_kernel(kernels, grad, inside, norm)


def reads_normalisation(x: Tensor) -> bool:
    """Whether :func:`fire_normalised` can take ``x``: contiguous float32 on the CPU, outside
    ``torch.compile`` and tracing, with the kernels built."""
    return x.dtype == torch.float32 and _kernel_for(x) is not None


def fire_normalised(
    x: Tensor, normalisation: Normalisation, levels: int, norm: float, rounding: str
) -> Tensor | None:
    """The spikes of ``x [T, B, C, ...]`` read through a BatchNorm's map in evaluation,
    ``fire(bn(x))[0]`` without the mask, the counts or ``bn(x)`` itself, by the C kernel;
    ``None`` (nothing run) where the kernel cannot take ``x`` or did not reproduce BatchNorm
    on its probe (:func:`_map_reproduces_batch_norm`)."""
    if not reads_normalisation(x) or not _map_reproduces_batch_norm(normalisation.contract):
        return None
    return _fire_normalised_by_kernel(_kernel(), x, normalisation, levels, norm, rounding)
