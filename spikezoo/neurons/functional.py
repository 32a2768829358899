"""Functional multi-step spiking neurons over a time-major input ``[T, ...]``.

Every neuron here runs the same dynamics (spikingjelly's ``step_mode="m"`` semantics), for
``t = 0 .. T-1`` with the membrane starting at ``v_init`` (default: at rest, ``v_reset``, or 0
for soft reset)::

    h[t] = v[t-1] + (x[t] - (v[t-1] - v_reset)) * k     leaky, decay_input=True
    h[t] = v[t-1] - (v[t-1] - v_reset) * k + x[t]       leaky, decay_input=False
    h[t] = v[t-1] + x[t]                                integrate-and-fire (no leak)
    s[t] = 1 if h[t] >= v_threshold else 0
    v[t] = v_reset if s[t] else h[t]                     hard reset
    v[t] = h[t] - s[t] * v_threshold                     soft reset (v_reset=None)

with ``k = 1 / tau`` (LIF) or ``k = sigmoid(w)`` (PLIF). The neurons are stateless: nothing
survives a call, so no ``reset_net`` is ever needed.

Back-propagation through time is one custom autograd function that keeps a single tensor per
step (the charged membrane ``h[t]``) and walks the steps in reverse, instead of the autograd
graph of the whole loop. Its two loops run on one of these backends:

- ``"torch"``: plain eager PyTorch, on any device;
- ``"inductor"``: the same loops fused by ``torch.compile`` into one kernel each (C++/OpenMP on
  the CPU, Triton on CUDA), compiled once per configuration and cached by PyTorch on disk;
- ``"cupy"``: the hand-written CUDA kernels (declared; they arrive in a later release);
- ``"auto"``: ``"inductor"`` where it compiles, else ``"torch"``, without noise.

Half-precision inputs (``float16``/``bfloat16``, e.g. under autocast) are integrated in float32;
spikes come back in the input dtype.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from spikezoo.neurons.surrogate import get_surrogate

__all__ = ["BACKENDS", "multistep_if", "multistep_lif", "multistep_neuron", "multistep_plif"]

#: The names `backend=` accepts: "auto" picks the first usable of the others.
BACKENDS = ("auto", "torch", "inductor", "cupy")

_logger = logging.getLogger(__name__)

#: (device type, config, T) for which ``torch.compile`` failed; ``"auto"`` runs them eagerly.
_INDUCTOR_FAILED: set[tuple] = set()


@dataclass(frozen=True)
class NeuronConfig:
    """The static part of the dynamics: everything except the decay ``k`` and the tensors."""

    leaky: bool
    decay_input: bool
    v_threshold: float
    v_reset: float | None
    surrogate: str
    alpha: float
    detach_reset: bool

    @property
    def charge_reset(self) -> float:
        """The rest potential the leak pulls towards (0 under soft reset, as in spikingjelly)."""
        return 0.0 if self.v_reset is None else self.v_reset


def _charge(x: Tensor, v: Tensor, k: Tensor, cfg: NeuronConfig) -> Tensor:
    if not cfg.leaky:
        return v + x
    above_rest = v - cfg.charge_reset if cfg.charge_reset else v  # v - 0.0 is v, exactly
    if cfg.decay_input:
        return v + (x - above_rest) * k
    return v - above_rest * k + x


def _reset(h: Tensor, fired: Tensor, cfg: NeuronConfig) -> Tensor:
    if cfg.v_reset is None:
        return h - fired.to(h.dtype) * cfg.v_threshold
    return torch.where(fired, cfg.v_reset, h)


def _forward_sequence(
    x: Tensor, v: Tensor, k: Tensor, cfg: NeuronConfig, keep_charged: bool
) -> tuple[Tensor, Tensor | None, Tensor]:
    """``x [T, N]`` -> spikes ``[T, N]`` (dtype of x), charged membranes ``[T, N]`` (for the
    backward pass; ``None`` unless ``keep_charged``), final ``v``."""
    spikes, charged = [], []
    for t in range(x.shape[0]):
        h = _charge(x[t].to(v.dtype), v, k, cfg)
        fired = h >= cfg.v_threshold
        spikes.append(fired.to(x.dtype))
        if keep_charged:
            charged.append(h)
        v = _reset(h, fired, cfg)
    return torch.stack(spikes), torch.stack(charged) if keep_charged else None, v


def _backward_sequence(
    grad_spikes: Tensor,
    grad_v: Tensor,
    charged: Tensor,
    v_init: Tensor,
    k: Tensor,
    cfg: NeuronConfig,
    grad_k_needed: bool,
) -> tuple[Tensor, Tensor, Tensor]:
    """Reverse-time BPTT: returns ``dL/dx [T, N]``, ``dL/dv_init`` and ``dL/dk``."""
    surrogate = get_surrogate(cfg.surrogate)
    grad_x = []
    grad_k = torch.zeros((), dtype=charged.dtype, device=charged.device)
    for t in range(charged.shape[0] - 1, -1, -1):
        h = charged[t]
        u = h - cfg.v_threshold
        dspike = surrogate.grad(u, cfg.alpha)
        if cfg.v_reset is None:
            dv_dh = 1.0 if cfg.detach_reset else 1.0 - cfg.v_threshold * dspike
        else:
            dv_dh = (u < 0).to(h.dtype)
            if not cfg.detach_reset:
                dv_dh = dv_dh + (cfg.v_reset - h) * dspike
        grad_h = grad_spikes[t].to(h.dtype) * dspike + grad_v * dv_dh
        if not cfg.leaky:
            grad_x.append(grad_h)
            grad_v = grad_h
            continue
        if grad_k_needed:
            v_prev = (
                v_init if t == 0 else _reset(charged[t - 1], charged[t - 1] >= cfg.v_threshold, cfg)
            )
            # decay_input: dh/dk = x - (v_prev - v_reset) = (h - v_prev) / k, divided at the end.
            dh_dk = h - v_prev if cfg.decay_input else cfg.charge_reset - v_prev
            grad_k = grad_k + (grad_h * dh_dk).sum()
        grad_x.append(grad_h * k if cfg.decay_input else grad_h)
        grad_v = grad_h * (1.0 - k)
    if grad_k_needed and cfg.decay_input:
        # k underflows to 0 only for an extreme PLIF w, where dh/dk * k is 0 too.
        grad_k = torch.where(k > 0, grad_k / k, 0.0)
    grad_x.reverse()
    return torch.stack(grad_x), grad_v, grad_k


@functools.cache
def _compiled(loop: Callable, cfg: NeuronConfig, flag: bool) -> Callable:
    """``loop`` compiled by ``torch.compile``, one compile region per ``(loop, cfg, flag)``.

    T is unrolled, so each sequence length is a graph of its own.
    """
    return torch.compile(
        loop, dynamic=True, fullgraph=True, isolate_recompiles=True, recompile_limit=64
    )


def validate_backend(backend: str) -> None:
    """Raise ``ValueError`` for a name not in :data:`BACKENDS`."""
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; expected one of {list(BACKENDS)}")


def _resolve_backend(backend: str, x: Tensor) -> str:
    """Pick the loops to run: "torch", "inductor", or "auto" (inductor, falling back to torch)."""
    validate_backend(backend)
    if backend == "cupy":
        _require_cupy(x)
    if torch.compiler.is_compiling():
        return "torch"  # an outer torch.compile traces and fuses the eager loops itself
    return backend


def _require_cupy(x: Tensor) -> None:
    try:
        import cupy  # noqa: F401
    except ImportError:
        raise RuntimeError(
            "backend='cupy' needs CuPy: pip install 'spikezoo[cuda12]' or 'spikezoo[cuda13]' "
            "(matching your CUDA major version), or use backend='auto'"
        ) from None
    if not x.is_cuda:
        raise RuntimeError(
            f"backend='cupy' runs on CUDA tensors only, but the input is on {x.device}; "
            "move it with .cuda() or use backend='auto'"
        )
    raise NotImplementedError(
        "the CuPy neuron kernels are not part of this spikezoo release yet; "
        "use backend='inductor' (fused by torch.compile) or backend='auto'"
    )


def _run_loop(
    loop: Callable, backend: str, cfg: NeuronConfig, flag: bool, *tensors: Tensor
) -> tuple:
    """Run the forward or backward loop (``flag``: keep_charged / grad_k_needed) on ``backend``."""
    failure_key = (tensors[0].device.type, loop.__name__, cfg, flag, tensors[0].shape[0])
    if backend == "inductor" or (backend == "auto" and failure_key not in _INDUCTOR_FAILED):
        # Detached aliases: a view's base would put its rank into dynamo's guards.
        detached = [t.detach() for t in tensors]
        try:
            return _compiled(loop, cfg, flag)(*detached, cfg, flag)
        except Exception:
            if backend != "auto":
                raise
            _logger.debug(
                "torch.compile failed for %s; using eager loops", failure_key, exc_info=True
            )
            _INDUCTOR_FAILED.add(failure_key)
    return loop(*tensors, cfg, flag)


class _MultiStepDynamics(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, k, v_init, cfg, backend):
        ctx.set_materialize_grads(False)
        ctx.cfg, ctx.backend = cfg, backend
        ctx.grad_k_needed = ctx.needs_input_grad[1]
        spikes, charged, v_final = _run_loop(_forward_sequence, backend, cfg, True, x, v_init, k)
        ctx.save_for_backward(charged, v_init, k)
        return spikes, v_final

    @staticmethod
    def backward(ctx, grad_spikes, grad_v_final):
        charged, v_init, k = ctx.saved_tensors
        if grad_spikes is None:
            grad_spikes = torch.zeros_like(charged)
        if grad_v_final is None:
            grad_v_final = torch.zeros((), dtype=charged.dtype, device=charged.device)
        grad_x, grad_v_init, grad_k = _run_loop(
            _backward_sequence,
            ctx.backend,
            ctx.cfg,
            ctx.grad_k_needed,
            grad_spikes,
            grad_v_final.to(charged.dtype),
            charged,
            v_init,
            k,
        )
        grad_v_init = grad_v_init if ctx.needs_input_grad[2] else None
        return grad_x, grad_k if ctx.grad_k_needed else None, grad_v_init, None, None


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
    backend = _resolve_backend(backend, x)
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
        spikes, v_final = _MultiStepDynamics.apply(flat, k, v0, cfg, backend)
    else:  # inference: nothing to keep for a backward pass
        spikes, _, v_final = _run_loop(_forward_sequence, backend, cfg, False, flat, v0, k)
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
