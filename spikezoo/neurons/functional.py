"""Functional multi-step spiking neurons over a time-major input ``[T, ...]``.

Every neuron here runs the same dynamics (spikingjelly's ``step_mode="m"`` semantics,
written out in :mod:`spikezoo.neurons.dynamics`), with the membrane starting at ``v_init``
(default: at rest, ``v_reset``, or 0 for soft reset), and ``k = 1 / tau`` (LIF) or
``k = sigmoid(w)`` (PLIF). The neurons are stateless: nothing survives a call, so no
``reset_net`` is ever needed.

Back-propagation through time is one custom autograd function
(:mod:`spikezoo.neurons.autograd`) that keeps a single tensor per step, the charged membrane.
Its two loops run on a backend of :mod:`spikezoo.neurons.backends`:

- ``"torch"``: plain eager PyTorch, on any device;
- ``"native"``: the same loops in C on the CPU (float32), built once per machine, nothing
  compiled per shape;
- ``"inductor"``: the same loops fused by ``torch.compile`` (C++/OpenMP on the CPU, Triton on
  CUDA), compiled once per configuration and cached by PyTorch on disk;
- ``"auto"``: the first available backend of
  :data:`spikezoo.neurons.backends.AUTO_PRIORITY` (``"cupy"`` on CUDA, ``"native"`` on a CPU,
  then ``"inductor"``, then ``"torch"``), falling back to the next one without noise where one
  fails.

Half-precision inputs (``float16``/``bfloat16``, e.g. under autocast) are integrated in float32;
spikes come back in the input dtype.
"""

from __future__ import annotations

import torch
from torch import Tensor

from spikezoo import _checks
from spikezoo.neurons.autograd import MultiStepDynamics
from spikezoo.neurons.backends import (
    BACKENDS,
    native,
    resolve_backend,
    run_backward_from_input,
    run_forward,
    validate_backend,
)
from spikezoo.neurons.dynamics import NeuronConfig
from spikezoo.neurons.saved_spikes import mark_spikes
from spikezoo.neurons.surrogate import get_surrogate

__all__ = [
    "BACKENDS",
    "multistep_if",
    "multistep_input_gradient",
    "multistep_lif",
    "multistep_neuron",
    "multistep_plif",
    "neuron_config",
    "normalised_multistep_neuron",
    "reads_normalisation",
    "validate_backend",
]


def _memory_order(x: Tensor) -> tuple[int, ...] | None:
    """The dimension order in which ``x [T, ...]`` is laid out densely (``None``: contiguous).

    Lets channels-last and other dense layouts be processed as ``[T, N]`` without a copy.
    """
    if x.is_contiguous():
        return None
    order = (0, *sorted(range(1, x.dim()), key=lambda d: -x.stride(d)))
    return order if x.permute(order).is_contiguous() else None


def _flatten(t: Tensor, order: tuple[int, ...] | None) -> Tensor:
    """``[T, ...]`` -> ``[T, N]``, with N enumerated in ``order``."""
    return (t if order is None else t.permute(order)).reshape(t.shape[0], -1)


def _unflatten(flat: Tensor, like: Tensor, order: tuple[int, ...] | None) -> Tensor:
    """Inverse of :func:`_flatten` for a tensor shaped like ``like``."""
    if order is None:
        return flat.view(like.shape)
    permuted = flat.view([like.shape[d] for d in order])
    return permuted.permute(sorted(range(like.dim()), key=lambda d: order[d]))


def _check_input(x: Tensor) -> None:
    if not isinstance(x, Tensor):
        raise TypeError(f"expected a torch.Tensor of shape [T, ...], got {type(x).__name__}")
    if x.dim() < 2:
        raise ValueError(
            f"expected a time-major input [T, ...] with at least 2 dims, got shape {tuple(x.shape)}"
        )
    if not x.is_floating_point():
        raise TypeError(f"expected a floating-point input, got dtype {x.dtype}")
    if x.shape[0] == 0:
        raise ValueError(f"expected at least one time step, got shape {tuple(x.shape)}")


def _finite(value: float) -> bool:
    """``math.isfinite(value)`` as arithmetic (``inf - inf`` and ``nan - nan`` are NaN), which
    ``torch.compile`` can also trace on a symbolic float: dynamo makes a float argument dynamic
    once the same code recompiles for another value (a second neuron kind, another threshold).
    """
    return value - value == 0


def neuron_config(
    *,
    leaky: bool,
    decay_input: bool,
    v_threshold: float,
    v_reset: float | None,
    surrogate: str,
    alpha: float | None,
    detach_reset: bool,
) -> NeuronConfig:
    """Check the neuron's arguments and build its :class:`NeuronConfig`.

    Raises ``ValueError`` (or ``TypeError`` for a wrong type) naming the argument for anything
    that would run but give garbage: a non-finite threshold, reset or ``alpha``; ``alpha <= 0``
    (zero or sign-flipped gradients); ``v_threshold <= v_reset`` under hard reset, or
    ``v_threshold <= 0`` under soft reset (the neuron would fire on zero input); an unknown
    surrogate; a flag that is not a bool. ``alpha=None`` takes the surrogate's default.
    """
    _checks.boolean("decay_input", decay_input)
    _checks.boolean("detach_reset", detach_reset)
    threshold = _checks.real_number("v_threshold", v_threshold)
    reset = None if v_reset is None else _checks.real_number("v_reset", v_reset)
    for name, value in (("v_threshold", threshold), ("v_reset", reset)):
        if value is not None and not _finite(value):
            raise ValueError(f"{name} must be finite, got {value}")
    if reset is not None and not threshold > reset:
        raise ValueError(
            f"v_threshold must be greater than v_reset, got v_threshold={threshold} and "
            f"v_reset={reset}: the neuron would fire at rest, on zero input"
        )
    if reset is None and not threshold > 0.0:
        raise ValueError(
            f"v_threshold must be > 0 with soft reset (v_reset=None, rest at 0), got "
            f"{threshold}: the neuron would fire at rest, on zero input"
        )
    surrogate_fn = get_surrogate(surrogate)
    sharpness = surrogate_fn.default_alpha if alpha is None else _checks.real_number("alpha", alpha)
    if not (_finite(sharpness) and sharpness > 0.0):
        raise ValueError(
            f"alpha (the surrogate's sharpness) must be finite and > 0, got {sharpness}"
        )
    return NeuronConfig(
        leaky=leaky,
        decay_input=decay_input,
        v_threshold=threshold,
        v_reset=reset,
        surrogate=surrogate,
        alpha=sharpness,
        detach_reset=detach_reset,
    )


def _dynamics(
    x: Tensor, decay: Tensor | float | None, backend: str, **settings: object
) -> tuple[NeuronConfig, tuple[str, ...], Tensor]:
    """The checked configuration, the backends to try on ``x`` and the decay ``k`` (a ``[]``
    tensor in the compute dtype: float32 for half-precision inputs) of :func:`multistep_neuron`'s
    arguments; ``settings`` are its keyword arguments from ``decay_input`` to ``detach_reset``.
    """
    cfg = neuron_config(leaky=decay is not None, **settings)
    candidates = resolve_backend(backend, x)
    compute_dtype = torch.float32 if x.dtype in (torch.float16, torch.bfloat16) else x.dtype
    if isinstance(decay, Tensor):
        return cfg, candidates, decay.reshape(()).to(compute_dtype)
    if decay is not None and not 0.0 < _checks.real_number("decay", decay) < 1.0:
        raise ValueError(f"decay must be in (0, 1) (1/tau for tau > 1) or None, got {decay}")
    # torch.full, not torch.tensor: a copy from the host would make it wait for the device
    k = torch.full((), 0.0 if decay is None else decay, dtype=compute_dtype, device=x.device)
    return cfg, candidates, k


def multistep_neuron(
    x: Tensor,
    *,
    decay: Tensor | float | None,
    decay_input: bool = True,
    v_threshold: float = 1.0,
    v_reset: float | None = 0.0,
    surrogate: str = "sigmoid",
    alpha: float | None = None,
    detach_reset: bool = True,
    v_init: Tensor | None = None,
    return_state: bool = False,
    backend: str = "auto",
) -> Tensor | tuple[Tensor, Tensor]:
    """Run the shared dynamics over ``x [T, ...]``; ``decay=None`` means no leak (IF).

    Returns spikes shaped like ``x`` (same dtype), and with ``return_state=True`` also the final
    membrane ``v[T-1]`` shaped ``x.shape[1:]`` (float32 for half-precision inputs).
    """
    _check_input(x)
    cfg, candidates, k = _dynamics(
        x,
        decay,
        backend,
        decay_input=decay_input,
        v_threshold=v_threshold,
        v_reset=v_reset,
        surrogate=surrogate,
        alpha=alpha,
        detach_reset=detach_reset,
    )
    compute_dtype = k.dtype
    _checks.boolean("return_state", return_state)

    # Under torch.compile the loops run on x as it is shaped: flattening it to [T, N] would fix
    # the memory order of N, and the compiler could no longer keep a convolution's output in
    # the layout it chose (channels-last), nor the neuron's loops vectorised over it.
    traced = torch.compiler.is_compiling()
    order = None if traced else _memory_order(x)
    if v_init is None:
        v0 = torch.full((), cfg.charge_reset, dtype=compute_dtype, device=x.device)
    elif not isinstance(v_init, Tensor):
        raise TypeError(
            f"v_init must be a torch.Tensor of shape {tuple(x.shape[1:])} (one time step of x) "
            f"or None, got {type(v_init).__name__} {v_init!r:.60}"
        )
    elif v_init.device != x.device:
        raise ValueError(f"v_init must be on the device of x, {x.device}, got {v_init.device}")
    elif v_init.shape != x.shape[1:]:
        raise ValueError(
            f"v_init must have the shape of one time step, {tuple(x.shape[1:])}, "
            f"got {tuple(v_init.shape)}"
        )
    elif traced:
        v0 = v_init.to(compute_dtype)
    else:
        v0 = _flatten(v_init.unsqueeze(0).to(compute_dtype), order)[0]
    flat = x if traced else _flatten(x, order)
    if torch.is_grad_enabled() and (x.requires_grad or k.requires_grad or v0.requires_grad):
        spikes, v_final = MultiStepDynamics.apply(flat, k, v0, cfg, candidates, return_state)
    else:  # inference: nothing to keep for a backward pass
        _, (spikes, _, v_final) = run_forward(
            candidates, flat, v0, k, cfg, keep_charged=False, final_needed=return_state
        )
    if traced:
        return (spikes, v_final.expand(x.shape[1:])) if return_state else spikes
    mark_spikes(spikes)
    spikes = _unflatten(spikes, x, order)
    if not return_state:
        return spikes
    v_final = v_final.expand(spikes[0].numel()).unsqueeze(0)
    return spikes, _unflatten(v_final, x[:1], order)[0]


def _native_dynamics(
    x: Tensor, decay: Tensor | float | None, backend: str, settings: dict
) -> tuple[NeuronConfig, Tensor] | None:
    """The configuration and decay of :func:`_dynamics` where the neurons can read ``x``
    through a normalisation (:func:`reads_normalisation`), else ``None``."""
    if not (isinstance(x, Tensor) and x.dim() >= 3 and x.is_contiguous()):
        return None
    if resolve_backend(backend, x)[0] != "native":  # before the checks of the configuration
        return None
    cfg, _, k = _dynamics(x, decay, backend, **settings)
    return (cfg, k) if native.runs(cfg) else None


def reads_normalisation(
    x: Tensor, *, decay: Tensor | float | None, backend: str, **settings: object
) -> bool:
    """Whether the neurons can read ``x [T, B, C, ...]`` through a BatchNorm's per-channel map
    (:class:`~spikezoo.neurons.backends.native.Normalisation`), in
    :func:`normalised_multistep_neuron` and :func:`multistep_input_gradient`: where ``x`` is
    contiguous and the backend that :func:`multistep_neuron` would run first on it is
    ``"native"``, which passed its probe for this configuration. ``settings`` are
    :func:`neuron_config`'s keyword arguments other than ``leaky``."""
    return _native_dynamics(x, decay, backend, settings) is not None


def normalised_multistep_neuron(
    x: Tensor,
    normalisation: native.Normalisation,
    *,
    decay: Tensor | float | None,
    backend: str,
    **settings: object,
) -> Tensor | None:
    """The spikes of :func:`multistep_neuron` on ``x [T, B, C, ...]`` normalised by
    ``normalisation`` (membrane at rest at ``t = 0``), in inference, in one pass that never
    writes the normalised input: the same spikes, bit for bit. ``None`` (nothing run) where
    not :func:`reads_normalisation`; ``ValueError`` where a gradient is asked for. For
    :func:`spikezoo.layers.batch_norm_fire`."""
    if torch.is_grad_enabled() and any(
        isinstance(t, Tensor) and t.requires_grad for t in (x, decay)
    ):
        raise ValueError("a normalised input is read in inference only (no gradient asked for)")
    dynamics = _native_dynamics(x, decay, backend, settings)
    if dynamics is None:
        return None
    cfg, k = dynamics
    rest = torch.full((), cfg.charge_reset, dtype=k.dtype)
    spikes, _, _ = native.forward(x.view(x.shape[0], -1), rest, k, cfg, False, False,
                                  normalisation)  # fmt: skip
    mark_spikes(spikes)
    return spikes.view(x.shape)


def multistep_input_gradient(
    x: Tensor,
    grad_spikes: Tensor,
    *,
    decay: Tensor | float | None,
    backend: str,
    normalisation: native.Normalisation | None = None,
    **settings: object,
) -> tuple[Tensor, Tensor]:
    """The gradients of :func:`multistep_neuron` (membrane at rest at ``t = 0``) for
    ``dL/dspikes = grad_spikes [T, ...]``, without its forward pass: the backend recharges the
    membranes from ``x`` in its backward loop, as the backward of a training forward does.

    For a layer that recomputes the neuron's input in its own backward pass
    (:func:`spikezoo.layers.batch_norm_fire`). ``settings`` are :func:`neuron_config`'s keyword
    arguments other than ``leaky``, all of them. Returns ``dL/dx`` shaped and laid out like
    ``x``, in its dtype, and ``dL/dk`` for the decay ``k`` (a ``[]`` tensor in the compute
    dtype; zero unless ``decay`` is a tensor that requires a gradient). The values are those
    that back-propagating through ``multistep_neuron(x, ...)`` gives, bit for bit.

    With ``normalisation``, where :func:`reads_normalisation` (else ``ValueError``), the
    neurons read ``x`` through it and ``dL/dx`` is the gradient of what they read (the
    normalised input, which is never written).
    """
    _check_input(x)
    if normalisation is not None:
        return _normalised_input_gradient(x, grad_spikes, normalisation, decay, backend, settings)
    cfg, candidates, k = _dynamics(x, decay, backend, **settings)
    order = _memory_order(x)
    rest = torch.full((), cfg.charge_reset, dtype=k.dtype, device=x.device)
    _, (grad_x, _, grad_k) = run_backward_from_input(
        candidates,
        _flatten(grad_spikes, order),
        torch.zeros((), dtype=k.dtype, device=x.device),
        _flatten(x.detach(), order),
        rest,
        k.detach(),
        cfg,
        grad_k_needed=isinstance(decay, Tensor) and decay.requires_grad,
        grad_v_needed=False,
    )
    return _unflatten(grad_x.to(x.dtype), x, order), grad_k


def _normalised_input_gradient(
    x: Tensor,
    grad_spikes: Tensor,
    normalisation: native.Normalisation,
    decay: Tensor | float | None,
    backend: str,
    settings: dict,
) -> tuple[Tensor, Tensor]:
    """:func:`multistep_input_gradient` with ``normalisation``, by backend ``"native"``."""
    dynamics = _native_dynamics(x, decay, backend, settings)
    if dynamics is None:
        raise ValueError(f"backend {backend!r} does not read a normalised input here")
    cfg, k = dynamics
    rows = x.shape[0], -1
    grad_x, _, grad_k = native.backward_from_input(
        grad_spikes.reshape(rows), torch.zeros((), dtype=k.dtype), x.detach().reshape(rows),
        torch.full((), cfg.charge_reset, dtype=k.dtype), k.detach(), cfg,
        grad_k_needed=isinstance(decay, Tensor) and decay.requires_grad, grad_v_needed=False,
        normalisation=normalisation,
    )  # fmt: skip
    return grad_x.view(x.shape), grad_k


def multistep_lif(
    x: Tensor,
    tau: float = 2.0,
    v_threshold: float = 1.0,
    v_reset: float | None = 0.0,
    decay_input: bool = True,
    surrogate: str = "sigmoid",
    alpha: float | None = None,
    detach_reset: bool = True,
    *,
    v_init: Tensor | None = None,
    return_state: bool = False,
    backend: str = "auto",
) -> Tensor | tuple[Tensor, Tensor]:
    """Leaky integrate-and-fire over ``x [T, ...]`` (spikingjelly ``LIFNode``, multi-step)."""
    _checks.time_constant("tau", tau)
    return multistep_neuron(
        x,
        decay=1.0 / tau,
        decay_input=decay_input,
        v_threshold=v_threshold,
        v_reset=v_reset,
        surrogate=surrogate,
        alpha=alpha,
        detach_reset=detach_reset,
        v_init=v_init,
        return_state=return_state,
        backend=backend,
    )


def multistep_plif(
    x: Tensor,
    w: Tensor,
    v_threshold: float = 1.0,
    v_reset: float | None = 0.0,
    decay_input: bool = True,
    surrogate: str = "sigmoid",
    alpha: float | None = None,
    detach_reset: bool = True,
    *,
    v_init: Tensor | None = None,
    return_state: bool = False,
    backend: str = "auto",
) -> Tensor | tuple[Tensor, Tensor]:
    """Parametric LIF: the decay is ``sigmoid(w)`` of a learnable scalar ``w``."""
    if not isinstance(w, Tensor) or w.numel() != 1:
        raise ValueError(f"w must be a one-element tensor, got {w!r}")
    return multistep_neuron(
        x,
        decay=torch.sigmoid(w),
        decay_input=decay_input,
        v_threshold=v_threshold,
        v_reset=v_reset,
        surrogate=surrogate,
        alpha=alpha,
        detach_reset=detach_reset,
        v_init=v_init,
        return_state=return_state,
        backend=backend,
    )


def multistep_if(
    x: Tensor,
    v_threshold: float = 1.0,
    v_reset: float | None = 0.0,
    surrogate: str = "sigmoid",
    alpha: float | None = None,
    detach_reset: bool = True,
    *,
    v_init: Tensor | None = None,
    return_state: bool = False,
    backend: str = "auto",
) -> Tensor | tuple[Tensor, Tensor]:
    """Integrate-and-fire without leak over ``x [T, ...]`` (spikingjelly ``IFNode``)."""
    return multistep_neuron(
        x,
        decay=None,
        v_threshold=v_threshold,
        v_reset=v_reset,
        surrogate=surrogate,
        alpha=alpha,
        detach_reset=detach_reset,
        v_init=v_init,
        return_state=return_state,
        backend=backend,
    )
