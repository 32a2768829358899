"""Backend ``"native"``: the loops in C on the CPU, float32, with nothing to compile per shape.

The kernels (``spikezoo/native/neurons.c``, built once per machine by :mod:`spikezoo.native`
in a few seconds) take a span of neurons per thread, on PyTorch's OpenMP threads, and run its
tiles of 128 neurons through all their steps (16 at a time beyond T = 16), fetching their rows
two tiles ahead, while the membranes stay in cache: one pass forward and one back.
Charged membranes, spikes and final membranes are the eager loops'
(:mod:`spikezoo.neurons.dynamics`) bit for bit: the same operations, rounded as written. The
gradients differ from the eager loops' by the rounding of one function, the sigmoid
surrogate's exponential (a polynomial within about one ulp, which vectorises, where PyTorch
calls its own vectorised ``exp``); ``atan``'s are the same bits.

In training the forward pass writes the spikes alone and autograd keeps the input ``x``;
:func:`backward_from_input` recharges each span's membranes into its rows of ``dL/dx`` and
overwrites them with the gradient on the way back, so a training step moves five ``[T, N]``
tensors, as the ``"inductor"`` kernels do, and compiles nothing: no first call of seconds,
and one library for every T.

Each configuration is checked once per process against the eager loops on a small probe
(spikes and membranes bit for bit, gradients to float32 rounding); a build that computes
otherwise raises, and ``"auto"`` takes the next backend.

The loops can also read their input through a BatchNorm (:class:`Normalisation`: the
per-channel affine map of BatchNorm's CPU kernel), so that :func:`spikezoo.layers.batch_norm_fire`
runs a BatchNorm and its neuron as one pass, forward in evaluation and in the backward pass's
recharge, without writing the normalised tensor (that module checks, on a probe, that the map
gives BatchNorm's output bit for bit).
"""

from __future__ import annotations

import ctypes
import functools
import math
from dataclasses import dataclass
from types import SimpleNamespace

import torch
from torch import Tensor

from spikezoo import native
from spikezoo.native import pointer, threads
from spikezoo.neurons import dynamics
from spikezoo.neurons.dynamics import NeuronConfig

__all__ = [
    "SURROGATES",
    "Normalisation",
    "backward",
    "backward_from_input",
    "forward",
    "runs",
    "unavailable_reason",
]

#: Surrogate name -> its number in the C source.
SURROGATES = {"sigmoid": 0, "atan": 1}


class _Neuron(ctypes.Structure):
    """``neuron_t`` of the C source."""

    _fields_ = [
        *((name, ctypes.c_int32) for name in ("leaky", "decay_input", "soft_reset")),
        *((name, ctypes.c_int32) for name in ("detach_reset", "surrogate")),
        *((name, ctypes.c_float) for name in ("v_threshold", "v_reset", "charge_reset")),
        *((name, ctypes.c_float) for name in ("alpha", "atan_scale", "atan_height", "k")),
    ]


_POINTER, _SIZE, _FLAG = ctypes.c_void_p, ctypes.c_int64, ctypes.c_int


class _Normalisation(ctypes.Structure):
    """``normalisation_t`` of the C source."""

    _fields_ = [
        *((name, _POINTER) for name in ("weight", "bias", "mean", "invstd")),
        *((name, ctypes.c_int64) for name in ("channels", "inner")),
        ("contract", ctypes.c_int32),
    ]


@dataclass(frozen=True)
class Normalisation:
    """A BatchNorm between ``x [T, B, C, ...]`` (contiguous) and the neurons: each neuron is
    charged with ``x * alpha + beta`` of its channel, for ``alpha = invstd * weight`` and
    ``beta = bias - mean * alpha`` (weight 1 and bias 0 where ``None``), each sum of a product a
    multiply-add where ``contract``: BatchNorm's output as its CPU kernel computes it.

    Attributes:
        weight, bias: BatchNorm's affine parameters (``[C]`` float32, contiguous) or ``None``.
        mean, invstd: the statistics it normalises with (``[C]`` float32, contiguous).
        inner: the values per channel and sample (``H * W``; ``N`` for ``[T, B, C, N]``).
        contract: whether a product and a sum are one multiply-add, as the kernel's build has
            them.
    """

    weight: Tensor | None
    bias: Tensor | None
    mean: Tensor
    invstd: Tensor
    inner: int
    contract: bool

    def as_struct(self) -> _Normalisation:
        """The C struct (it points into the tensors: keep this record alive while it is used)."""
        return _Normalisation(
            pointer(self.weight), pointer(self.bias), self.mean.data_ptr(),
            self.invstd.data_ptr(), self.mean.numel(), self.inner, self.contract,
        )  # fmt: skip


def _struct(normalisation: Normalisation | None) -> ctypes._Pointer | None:
    return None if normalisation is None else ctypes.byref(normalisation.as_struct())


_NO_LIBRARY = "no C compiler could build spikezoo/native/neurons.c here (see the log)"


@functools.cache
def _library() -> SimpleNamespace | None:
    """The two loops (``neurons_forward_f32``, ``neurons_backward_f32``), or ``None``."""
    library = native.library("neurons")
    if library is None:
        return None
    structs = [ctypes.POINTER(_Neuron), ctypes.POINTER(_Normalisation)]
    forward_args = [*structs, _POINTER, *[_SIZE] * 3, _POINTER, _FLAG, *[_POINTER] * 3, _FLAG]
    backward_args = [*structs, _POINTER, _POINTER, _FLAG, _POINTER, _POINTER, _SIZE, _POINTER]
    backward_args += [_FLAG, _SIZE, _SIZE, *[_POINTER] * 3, _FLAG]
    return SimpleNamespace(
        **{
            name: native.kernel(library, name, args, ctypes.c_int)
            for name, args in [
                ("neurons_forward_f32", forward_args),
                ("neurons_backward_f32", backward_args),
            ]
        }
    )


def unavailable_reason(x: Tensor) -> str | None:
    """Why the C loops cannot run on ``x`` (``None``: they can)."""
    if x.device.type != "cpu":
        return f"it runs on CPU tensors only, but the input is on {x.device}"
    if x.dtype != torch.float32:
        return f"it runs on float32 input only, but the input is {x.dtype}"
    if _library() is None:
        return _NO_LIBRARY
    return None


def _neuron(cfg: NeuronConfig, k: Tensor) -> _Neuron:
    if cfg.surrogate not in SURROGATES:
        raise ValueError(
            f"backend 'native' has loops for the surrogates {sorted(SURROGATES)}, not "
            f"{cfg.surrogate!r}; use backend='inductor' or 'torch' for a registered surrogate"
        )
    # ctypes rounds each Python float to float32 as PyTorch rounds a scalar operand
    return _Neuron(
        leaky=cfg.leaky,
        decay_input=cfg.decay_input,
        soft_reset=cfg.v_reset is None,
        detach_reset=cfg.detach_reset,
        surrogate=SURROGATES[cfg.surrogate],
        v_threshold=cfg.v_threshold,
        v_reset=0.0 if cfg.v_reset is None else cfg.v_reset,
        charge_reset=cfg.charge_reset,
        alpha=cfg.alpha,
        atan_scale=math.pi / 2 * cfg.alpha,
        atan_height=cfg.alpha / 2,
        k=float(k),
    )


def _probe_input() -> Tensor:
    """``[5, 1031]``: membranes that land on, just below and just above the threshold, NaN,
    infinities, five steps (two chunks) and a partial tile of neurons."""
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(5, 1031, generator=generator, dtype=torch.float32) * 2 + 0.5
    x[:, :8] = torch.tensor([1.0, 0.5, 0.25, float("nan"), float("inf"), -float("inf"), 0.0, -0.0])
    return x


@functools.cache
def _probe_failure(cfg: NeuronConfig) -> str | None:
    """``None`` if the C loops compute the eager loops' spikes and membranes bit for bit, and
    their gradients to float32 rounding, for ``cfg`` on a probe; else what differed."""
    x, k = _probe_input(), torch.tensor(1 / 3, dtype=torch.float32)
    v_init = torch.linspace(-1.0, 1.0, x.shape[1], dtype=torch.float32)
    grad_spikes = torch.randn(x.shape, generator=torch.Generator().manual_seed(1), dtype=x.dtype)
    grad_v = torch.linspace(1.0, -1.0, x.shape[1], dtype=torch.float32)
    library, neuron = _library(), _neuron(cfg, k)
    expected = dynamics.forward_sequence(x, v_init, k, cfg, True)
    got = _forward(library, neuron, x, v_init, True, True)
    reference = dynamics.backward_sequence(grad_spikes, grad_v, expected[1], v_init, k, cfg, True)
    try:
        for a, b in zip(got, expected, strict=True):
            torch.testing.assert_close(a, b, rtol=0, atol=0, equal_nan=True)
        for charged, saved_x in ((got[1], None), (None, x)):
            gradients = _backward(library, neuron, cfg, grad_spikes, grad_v, charged, saved_x,
                                  v_init, k, True, True)  # fmt: skip
            for a, b in zip(gradients, reference, strict=True):
                torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6, equal_nan=True)
    except AssertionError as error:
        return str(error)
    return None


def runs(cfg: NeuronConfig) -> bool:
    """Whether the C loops are built and passed their probe for ``cfg``."""
    return cfg.surrogate in SURROGATES and _library() is not None and _probe_failure(cfg) is None


def _rows(x: Tensor) -> tuple[Tensor, int]:
    """``x [T, N]`` as the C loops read it, with the elements between its steps: unit-stride
    rows as they are (a static image broadcast to every step has 0 between them, and is not
    copied T times), anything else as a contiguous copy."""
    if x.shape[1] > 1 and x.stride(1) != 1:
        x = x.contiguous()
    return x, x.stride(0)


def _float32(t: Tensor) -> Tensor:
    return t.detach().to(torch.float32).contiguous()


def _loops(cfg: NeuronConfig, k: Tensor) -> tuple[SimpleNamespace, _Neuron]:
    """The library and the C configuration, once this configuration passed the probe."""
    neuron = _neuron(cfg, k)
    library = _library()
    if library is None:
        raise RuntimeError(f"backend 'native' cannot run here: {_NO_LIBRARY}")
    if (failure := _probe_failure(cfg)) is not None:
        raise RuntimeError(
            f"backend 'native' does not reproduce the eager loops for {cfg} on this machine "
            f"(its build computes otherwise); use backend='inductor' or 'torch'.\n{failure}"
        )
    return library, neuron


def _forward(
    library: SimpleNamespace,
    neuron: _Neuron,
    x: Tensor,
    v_init: Tensor,
    keep_charged: bool,
    final_needed: bool,
    normalisation: Normalisation | None = None,
) -> tuple[Tensor, Tensor | None, Tensor | None]:
    """The C forward loop on float32 ``x [T, N]`` (read through ``normalisation`` unless it is
    ``None``) and ``v_init`` (``[N]`` or ``[]``)."""
    x, x_step = _rows(x)
    steps, neurons = x.shape
    spikes = x.new_empty(x.shape)
    charged = x.new_empty(x.shape) if keep_charged else None
    v_final = x.new_empty(neurons) if final_needed else None
    failed = library.neurons_forward_f32(
        ctypes.byref(neuron), _struct(normalisation), x.data_ptr(), x_step, steps, neurons,
        v_init.data_ptr(), v_init.dim() > 0,
        spikes.data_ptr(), pointer(charged), pointer(v_final), threads(x.numel()),
    )  # fmt: skip
    if failed:
        raise MemoryError("backend 'native': no memory for a BatchNorm's per-channel coefficients")
    return spikes, charged, v_final


def forward(
    x: Tensor,
    v_init: Tensor,
    k: Tensor,
    cfg: NeuronConfig,
    keep_charged: bool,
    final_needed: bool = True,
    normalisation: Normalisation | None = None,
) -> tuple[Tensor, Tensor | None, Tensor | None]:
    """:func:`spikezoo.neurons.dynamics.forward_sequence` for ``x [T, N]`` float32 on the CPU;
    ``v_init`` (``[N]`` or ``[]``) and ``k`` (``[]``) float32; with ``normalisation``, the
    neurons read ``x`` through it (``x`` is then ``[T, B, C, ...]`` flattened to ``[T, N]``)."""
    library, neuron = _loops(cfg, k)
    return _forward(library, neuron, x, _float32(v_init), keep_charged, final_needed, normalisation)


def _backward(
    library: SimpleNamespace,
    neuron: _Neuron,
    cfg: NeuronConfig,
    grad_spikes: Tensor,
    grad_v: Tensor,
    charged: Tensor | None,
    x: Tensor | None,
    v_init: Tensor,
    k: Tensor,
    grad_k_needed: bool,
    grad_v_needed: bool,
    normalisation: Normalisation | None = None,
) -> tuple[Tensor, Tensor | None, Tensor]:
    """The C backward loop from the kept ``charged [T, N]`` (contiguous), or from the input
    ``x`` (read through ``normalisation`` unless it is ``None``) where ``charged`` is ``None``
    (float32)."""
    x, x_step = (None, 0) if x is None else _rows(x)
    saved = charged if charged is not None else x
    steps, neurons = saved.shape
    grad_spikes, grad_v, v_init = (_float32(t) for t in (grad_spikes, grad_v, v_init))
    grad_x = saved.new_empty(saved.shape)
    grad_v_init = saved.new_empty(neurons) if grad_v_needed else None
    grad_k_needed = grad_k_needed and cfg.leaky
    grad_k_sum = ctypes.c_double(0.0)
    failed = library.neurons_backward_f32(
        ctypes.byref(neuron), _struct(normalisation), grad_spikes.data_ptr(), grad_v.data_ptr(),
        grad_v.dim() > 0,
        pointer(charged), pointer(x), x_step, v_init.data_ptr(), v_init.dim() > 0, steps,
        neurons, grad_x.data_ptr(), pointer(grad_v_init),
        ctypes.byref(grad_k_sum) if grad_k_needed else None, threads(saved.numel()),
    )  # fmt: skip
    if failed:
        raise MemoryError(
            f"backend 'native': no memory for the dL/dk sums of {neurons} neurons or a "
            "BatchNorm's per-channel coefficients"
        )
    grad_k = torch.tensor(grad_k_sum.value, dtype=torch.float32)
    if grad_k_needed:
        grad_k = dynamics.finish_grad_k(grad_k, _float32(k), cfg)
    return grad_x, grad_v_init, grad_k


def backward(
    grad_spikes: Tensor,
    grad_v: Tensor,
    charged: Tensor,
    v_init: Tensor,
    k: Tensor,
    cfg: NeuronConfig,
    grad_k_needed: bool,
    grad_v_needed: bool = True,
) -> tuple[Tensor, Tensor | None, Tensor]:
    """:func:`spikezoo.neurons.dynamics.backward_sequence` from the kept ``charged [T, N]``."""
    library, neuron = _loops(cfg, k)
    return _backward(library, neuron, cfg, grad_spikes, grad_v, charged.contiguous(), None,
                     v_init, k, grad_k_needed, grad_v_needed)  # fmt: skip


def backward_from_input(
    grad_spikes: Tensor,
    grad_v: Tensor,
    x: Tensor,
    v_init: Tensor,
    k: Tensor,
    cfg: NeuronConfig,
    grad_k_needed: bool,
    grad_v_needed: bool = True,
    normalisation: Normalisation | None = None,
) -> tuple[Tensor, Tensor | None, Tensor]:
    """:func:`backward` with the charged membranes recharged from the forward pass's input
    ``x [T, N]``, block by block, in the rows of ``dL/dx`` they leave to their gradient; with
    ``normalisation``, the neurons read ``x`` through it, and the gradient is that of what they
    read (the normalised input)."""
    library, neuron = _loops(cfg, k)
    return _backward(library, neuron, cfg, grad_spikes, grad_v, None, x, v_init, k,
                     grad_k_needed, grad_v_needed, normalisation)  # fmt: skip
