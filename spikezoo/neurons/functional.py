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
- ``"inductor"``: the same loops fused by ``torch.compile`` (C++/OpenMP on the CPU, Triton on
  CUDA), compiled once per configuration and cached by PyTorch on disk;
- ``"auto"``: the first available backend of
  :data:`spikezoo.neurons.backends.AUTO_PRIORITY` (``"inductor"``, then ``"torch"``),
  falling back to the next one without noise where one fails.

Half-precision inputs (``float16``/``bfloat16``, e.g. under autocast) are integrated in float32;
spikes come back in the input dtype.
"""

from __future__ import annotations

import torch
from torch import Tensor

from spikezoo.neurons.autograd import MultiStepDynamics
from spikezoo.neurons.backends import BACKENDS, resolve_backend, run_forward, validate_backend
from spikezoo.neurons.dynamics import NeuronConfig
from spikezoo.neurons.surrogate import get_surrogate

__all__ = [
    "BACKENDS",
    "multistep_if",
    "multistep_lif",
    "multistep_neuron",
    "multistep_plif",
    "validate_backend",
    "validate_tau",
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
    surrogate_fn = get_surrogate(surrogate)
    cfg = NeuronConfig(
        leaky=decay is not None,
        decay_input=decay_input,
        v_threshold=float(v_threshold),
        v_reset=None if v_reset is None else float(v_reset),
        surrogate=surrogate,
        alpha=surrogate_fn.default_alpha if alpha is None else float(alpha),
        detach_reset=detach_reset,
    )
    candidates = resolve_backend(backend, x)
    compute_dtype = torch.float32 if x.dtype in (torch.float16, torch.bfloat16) else x.dtype
    if isinstance(decay, Tensor):
        k = decay.reshape(()).to(compute_dtype)
    else:
        k = torch.tensor(0.0 if decay is None else decay, dtype=compute_dtype, device=x.device)

    order = _memory_order(x)
    if v_init is None:
        v0 = torch.full((), cfg.charge_reset, dtype=compute_dtype, device=x.device)
    elif v_init.shape != x.shape[1:]:
        raise ValueError(
            f"v_init must have the shape of one time step, {tuple(x.shape[1:])}, "
            f"got {tuple(v_init.shape)}"
        )
    else:
        v0 = _flatten(v_init.unsqueeze(0).to(compute_dtype), order)[0]
    flat = _flatten(x, order)
    if torch.is_grad_enabled() and (x.requires_grad or k.requires_grad or v0.requires_grad):
        spikes, v_final = MultiStepDynamics.apply(flat, k, v0, cfg, candidates)
    else:  # inference: nothing to keep for a backward pass
        _, (spikes, _, v_final) = run_forward(candidates, flat, v0, k, cfg, keep_charged=False)
    spikes = _unflatten(spikes, x, order)
    if not return_state:
        return spikes
    v_final = v_final.expand(spikes[0].numel()).unsqueeze(0)
    return spikes, _unflatten(v_final, x[:1], order)[0]


def validate_tau(name: str, tau: float) -> None:
    """Raise ``ValueError`` unless ``tau > 1`` (a decay of ``1/tau`` per step must be below 1)."""
    if not tau > 1.0:
        raise ValueError(f"{name} must be > 1 (the membrane decays by 1/tau per step), got {tau}")


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
    validate_tau("tau", tau)
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
