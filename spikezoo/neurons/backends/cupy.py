"""Backend ``"cupy"``: hand-written CUDA kernels, compiled at run time by NVRTC through CuPy.

The kernels live in ``spikezoo/neurons/cuda/neurons.cu``, shipped with the package. One launch
runs all T forward steps, one thread per neuron; one launch runs back-propagation through time
in reverse, and PLIF's decay gradient is reduced on the device. In training the forward pass
writes the spikes alone and autograd keeps its input ``x``: :func:`backward_from_input`
recharges each neuron's membranes from ``x`` in the backward kernel (in the thread's own
memory up to 16 steps, else in the gradient's buffer), so no ``[T, N]`` float32 membranes are
kept between the passes (:func:`backward`, which every backend has, walks back from kept
membranes). Float32, float16 and bfloat16 inputs are integrated in float32. The arithmetic
is the eager loops' (:mod:`spikezoo.neurons.dynamics`), operation for operation, compiled
without contracting multiply-adds.

Each configuration (leak, reset, ``detach_reset``, ``decay_input``, surrogate) compiles once per
process, for the GPU at hand; CuPy also caches the binary on disk. Kernels run on the current
PyTorch stream of the input's device and read and write the tensors in place, by pointer.
Needs CuPy for the CUDA major version PyTorch was built with:
``pip install 'spikezoo-vit[cuda12]'`` or ``'spikezoo-vit[cuda13]'``.
"""

from __future__ import annotations

import functools
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import torch
from torch import Tensor

from spikezoo.neurons.dynamics import NeuronConfig

__all__ = [
    "INSTALL_HINT",
    "NVRTC_OPTIONS",
    "SOURCE",
    "STORAGE_TYPES",
    "SURROGATES",
    "CudaCompileError",
    "backward",
    "backward_from_input",
    "forward",
    "kernel_names",
    "unavailable_reason",
]

#: The CUDA source of the kernels, shipped with the package.
SOURCE = Path(__file__).resolve().parent.parent / "cuda" / "neurons.cu"

#: Options for NVRTC (CuPy adds the target architecture). ``-fmad=false``: no multiply-add is
#: contracted, so each operation rounds as in the eager loops.
NVRTC_OPTIONS = ("-std=c++17", "-fmad=false")

#: Surrogate name -> the ``spikezoo::Surrogate`` value in the CUDA source.
SURROGATES = {"sigmoid": 0, "atan": 1}

#: torch dtype -> the C++ storage type of its elements in the CUDA source.
STORAGE_TYPES = {
    torch.float32: "float",
    torch.float16: "spikezoo::half_bits",
    torch.bfloat16: "spikezoo::bfloat16_bits",
}

#: What to install for this backend (part of its error messages).
INSTALL_HINT = (
    "pip install 'spikezoo-vit[cuda12]' or 'spikezoo-vit[cuda13]', matching the CUDA major "
    "version of your PyTorch build"
)

_THREADS_PER_BLOCK = 256
_MAX_BLOCKS = 2**31 - 1


class CudaCompileError(RuntimeError):
    """NVRTC could not compile the CUDA neuron kernels."""


def _template_arguments(cfg: NeuronConfig) -> str:
    """``Leaky, DecayInput, SoftReset, DetachReset, SurrogateKind`` of ``spikezoo::Neuron``."""
    flags = (cfg.leaky, cfg.decay_input or not cfg.leaky, cfg.v_reset is None, cfg.detach_reset)
    return ", ".join(
        [*("true" if flag else "false" for flag in flags), str(SURROGATES[cfg.surrogate])]
    )


def kernel_names(cfg: NeuronConfig) -> dict[tuple[str, torch.dtype | None], str]:
    """The C++ names of the kernels of one configuration, keyed by ``(role, dtype)``.

    ``("forward", dtype)``: the forward kernel for inputs of ``dtype``; ``("backward", dtype)``:
    the backward kernel for ``dL/dspikes`` of ``dtype``; ``("backward_from_input", dtype)``:
    the backward kernel from inputs (and ``dL/dspikes``) of ``dtype``; ``("grad_k", None)``:
    the kernel that finishes ``dL/dk``. IF ignores ``decay_input``, so both values name the
    same kernels.
    """
    return _kernel_names(_template_arguments(cfg))


@functools.cache
def _kernel_names(flags: str) -> dict[tuple[str, torch.dtype | None], str]:
    names: dict[tuple[str, torch.dtype | None], str] = {}
    for dtype, storage in STORAGE_TYPES.items():
        for role in ("forward", "backward", "backward_from_input"):
            names[role, dtype] = f"spikezoo::{role}_kernel<{storage}, {flags}>"
    names["grad_k", None] = f"spikezoo::finish_grad_k_kernel<{flags}>"
    return names


@functools.cache
def _import_cupy() -> tuple[ModuleType | None, str | None]:
    """CuPy, or why it cannot serve PyTorch here (``None`` and a message)."""
    try:
        import cupy
    except ModuleNotFoundError:
        return None, f"CuPy is not installed: {INSTALL_HINT}"
    except Exception as error:  # a broken install: missing CUDA libraries, two CuPy wheels...
        return None, f"CuPy could not be imported ({type(error).__name__}: {error}); {INSTALL_HINT}"
    cupy_cuda = cupy.cuda.runtime.runtimeGetVersion() // 1000
    torch_cuda = int(torch.version.cuda.split(".")[0]) if torch.version.cuda else None
    if torch_cuda is not None and cupy_cuda != torch_cuda:
        return None, (
            f"CuPy {cupy.__version__} is built for CUDA {cupy_cuda} but PyTorch for CUDA "
            f"{torch_cuda}: replace it with pip install 'spikezoo-vit[cuda{torch_cuda}]'"
        )
    return cupy, None


def unavailable_reason(x: Tensor) -> str | None:
    """Why the kernels cannot run on ``x`` (``None``: they can)."""
    if not x.is_cuda:
        return f"it runs on CUDA tensors only, but the input is on {x.device}"
    if x.dtype not in STORAGE_TYPES:
        supported = ", ".join(str(dtype).removeprefix("torch.") for dtype in STORAGE_TYPES)
        return f"it supports {supported} inputs, not {str(x.dtype).removeprefix('torch.')}"
    return _import_cupy()[1]


def _cupy() -> ModuleType:
    cupy, reason = _import_cupy()
    if cupy is None:
        raise RuntimeError(f"backend 'cupy' cannot run: {reason}")
    return cupy


@functools.cache
def _module(flags: str) -> Any:
    """The ``cupy.RawModule`` of one configuration; NVRTC compiles it on first use."""
    return _cupy().RawModule(
        code=SOURCE.read_text(),
        options=NVRTC_OPTIONS,
        name_expressions=list(_kernel_names(flags).values()),
    )


def _check_surrogate(cfg: NeuronConfig) -> None:
    if cfg.surrogate not in SURROGATES:
        raise ValueError(
            f"backend 'cupy' has kernels for the surrogates {sorted(SURROGATES)}, not "
            f"{cfg.surrogate!r}; use backend='inductor' or 'torch' for a registered surrogate"
        )


def _kernel(cupy: ModuleType, cfg: NeuronConfig, role: str, dtype: torch.dtype | None) -> Any:
    """One kernel of the configuration ``cfg``, compiled for and loaded on the current device."""
    flags = _template_arguments(cfg)
    name = _kernel_names(flags)[role, dtype]
    try:
        return _module(flags).get_function(name)
    except cupy.cuda.compiler.CompileException as error:
        log = "\n".join(str(error).strip().splitlines()[:10])
        raise CudaCompileError(
            f"NVRTC could not compile the spikezoo CUDA neurons ({SOURCE}, {name}):\n{log}"
        ) from None


def _pointer(t: Tensor | None) -> np.uint64:
    """The device address of ``t`` (null for ``None``), passed to a kernel by value."""
    return np.uint64(0 if t is None else t.data_ptr())


def _stride(t: Tensor) -> np.int64:
    """0 for a scalar shared by every neuron, 1 for one value per neuron."""
    return np.int64(0 if t.dim() == 0 else 1)


def _launch(
    cfg: NeuronConfig,
    role: str,
    dtype: torch.dtype | None,
    device: torch.device,
    blocks: int,
    threads: int,
    args: tuple,
) -> None:
    """Run a kernel of ``cfg`` on ``device``, in PyTorch's current stream there."""
    cupy = _cupy()
    with cupy.cuda.Device(device.index):
        kernel = _kernel(cupy, cfg, role, dtype)
        # the raw handle: torch.cuda.current_stream builds a Python Stream object per call,
        # which took 24 us on an H200's host (2026-12-04), about as long as the launch itself
        with _stream(torch._C._cuda_getCurrentRawStream(device.index)):
            kernel((blocks,), (threads,), args)


class _StreamHandle:
    """A CUDA stream by its ``cudaStream_t`` handle, with the CUDA stream protocol that
    ``cupy.cuda.Stream.from_external`` reads."""

    __slots__ = ("handle",)

    def __init__(self, handle: int) -> None:
        self.handle = handle

    def __cuda_stream__(self) -> tuple[int, int]:
        return 0, self.handle


@functools.lru_cache(maxsize=256)  # bounded: external streams may come and go
def _stream(handle: int) -> Any:
    """CuPy's wrapper of the CUDA stream ``handle``, made once per stream; it owns nothing, so
    a handle that CUDA reuses for another stream is wrapped correctly too."""
    return _cupy().cuda.Stream.from_external(_StreamHandle(handle))


def _blocks(neurons: int) -> int:
    return min(-(-neurons // _THREADS_PER_BLOCK), _MAX_BLOCKS)


def _float32(t: Tensor, device: torch.device) -> Tensor:
    """``t`` as a dense float32 tensor on ``device`` (itself when it already is one)."""
    return t.to(device=device, dtype=torch.float32).contiguous()


def forward(
    x: Tensor,
    v_init: Tensor,
    k: Tensor,
    cfg: NeuronConfig,
    keep_charged: bool,
    final_needed: bool = True,
) -> tuple[Tensor, Tensor | None, Tensor | None]:
    """:func:`spikezoo.neurons.dynamics.forward_sequence` in one kernel launch.

    ``x [T, N]`` float32, float16 or bfloat16 on a CUDA device; ``v_init`` (``[N]`` or ``[]``)
    and ``k`` (``[]``) float32. Spikes come in the dtype of ``x``, membranes in float32. With
    ``final_needed=False`` the kernel writes no final membrane (a null pointer) and ``None``
    comes back for it (at ``T = 1``, one of the three ``[N]`` tensors the kernel moves).
    """
    _check_surrogate(cfg)
    x = x.contiguous()
    steps, neurons = x.shape
    v_init, k = _float32(v_init, x.device), _float32(k, x.device)
    spikes = torch.empty_like(x)
    charged = torch.empty(x.shape, dtype=torch.float32, device=x.device) if keep_charged else None
    v_final = torch.empty(neurons, dtype=torch.float32, device=x.device) if final_needed else None
    if neurons:
        _launch(cfg, "forward", x.dtype, x.device, _blocks(neurons), _THREADS_PER_BLOCK, (
            _pointer(x), _pointer(v_init), _stride(v_init), _pointer(k),
            np.float32(cfg.v_threshold), np.float32(cfg.charge_reset),
            _pointer(spikes), _pointer(charged), _pointer(v_final),
            np.int64(steps), np.int64(neurons),
        ))  # fmt: skip
    return spikes, charged, v_final


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
    """:func:`spikezoo.neurons.dynamics.backward_sequence` in one kernel launch.

    With ``grad_v_needed=False`` the kernel writes no ``dL/dv_init`` (a null pointer) and
    ``None`` comes back for it.

    ``dL/dk`` is summed on the device (a block reduction, then one atomic add per block) and
    finished by a one-thread kernel; nothing is copied to the host.
    """
    return _walk_back("backward", grad_spikes, grad_v, charged.contiguous(), v_init, k, cfg,
                      grad_k_needed, grad_v_needed)  # fmt: skip


def backward_from_input(
    grad_spikes: Tensor,
    grad_v: Tensor,
    x: Tensor,
    v_init: Tensor,
    k: Tensor,
    cfg: NeuronConfig,
    grad_k_needed: bool,
    grad_v_needed: bool = True,
) -> tuple[Tensor, Tensor | None, Tensor]:
    """:func:`backward` from the forward pass's input ``x [T, N]`` instead of its charged
    membranes, in one kernel launch: each thread charges its neuron's membranes again, then
    walks them back. ``dL/dspikes`` comes in the dtype of the spikes, which is that of ``x``.
    """
    x = x.contiguous()
    return _walk_back("backward_from_input", grad_spikes.to(x.dtype), grad_v, x, v_init, k, cfg,
                      grad_k_needed, grad_v_needed)  # fmt: skip


def _walk_back(
    role: str,
    grad_spikes: Tensor,
    grad_v: Tensor,
    saved: Tensor,
    v_init: Tensor,
    k: Tensor,
    cfg: NeuronConfig,
    grad_k_needed: bool,
    grad_v_needed: bool,
) -> tuple[Tensor, Tensor | None, Tensor]:
    """Launch the backward kernel ``role`` on what the forward pass kept, ``saved [T, N]`` (the
    charged membranes or the input, dense): ``dL/dx``, ``dL/dv_init`` (``None`` unless
    ``grad_v_needed``) and ``dL/dk``."""
    _check_surrogate(cfg)
    device = saved.device
    steps, neurons = saved.shape
    grad_spikes = grad_spikes.contiguous()
    grad_v, v_init, k = (_float32(t, device) for t in (grad_v, v_init, k))
    grad_x = torch.empty(saved.shape, dtype=torch.float32, device=device)
    grad_v_init = (
        torch.empty(neurons, dtype=torch.float32, device=device) if grad_v_needed else None
    )
    grad_k = torch.zeros((), dtype=torch.float32, device=device)
    grad_k_needed = grad_k_needed and cfg.leaky
    if neurons:
        _launch(cfg, role, grad_spikes.dtype, device, _blocks(neurons), _THREADS_PER_BLOCK, (
            _pointer(grad_spikes), _pointer(grad_v), _stride(grad_v), _pointer(saved),
            _pointer(v_init), _stride(v_init), _pointer(k),
            np.float32(cfg.v_threshold), np.float32(cfg.charge_reset), np.float64(cfg.alpha),
            _pointer(grad_x), _pointer(grad_v_init), _pointer(grad_k if grad_k_needed else None),
            np.int64(steps), np.int64(neurons),
        ))  # fmt: skip
    if grad_k_needed:
        _launch(cfg, "grad_k", None, device, 1, 1, (_pointer(k), _pointer(grad_k)))
    return grad_x, grad_v_init, grad_k
