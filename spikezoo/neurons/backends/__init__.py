"""The registry of neuron backends: how the forward and backward time loops run.

A backend is a :class:`Backend` record: its ``forward`` and ``backward`` take the arguments of
:func:`spikezoo.neurons.dynamics.forward_sequence` and
:func:`~spikezoo.neurons.dynamics.backward_sequence` and return the same results, and its
``unavailable_reason(x)`` says why it cannot run on the input ``x`` (``None``: it can).

``backend="auto"`` walks :data:`AUTO_PRIORITY` and takes the first backend available for the
input: ``"cupy"`` for CUDA tensors where CuPy works, ``"native"`` for float32 CPU tensors where
a C compiler built its loops, then ``"inductor"``, then ``"torch"``. If
that backend then fails (for example, ``torch.compile`` finds no C++ compiler), the failure is
logged at debug level, remembered for that device, dtype and configuration, and the next one
runs instead. A backend named explicitly is never replaced: its errors propagate.

The environment variable ``SPIKEZOO_BACKEND`` (see :data:`BACKEND_ENV`), when set, replaces
``"auto"`` everywhere: neurons left at ``backend="auto"`` run the backend it names, exactly as
if it had been named explicitly. A backend passed explicitly still wins.

Adding a backend is one module defining ``forward``, ``backward`` and ``unavailable_reason``
plus one :func:`register_backend` call at the end of this file (its position there is its
place in :data:`AUTO_PRIORITY`).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from spikezoo.neurons.backends import cupy, eager, inductor, native
from spikezoo.neurons.dynamics import NeuronConfig

__all__ = [
    "AUTO_PRIORITY",
    "BACKENDS",
    "BACKEND_ENV",
    "Backend",
    "backend_names",
    "get_backend",
    "register_backend",
    "resolve_backend",
    "run_backward",
    "run_backward_from_input",
    "run_forward",
    "run_training_forward",
    "validate_backend",
]

_logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Backend:
    """One way to run the neuron loops.

    Attributes:
        name: what ``backend=`` takes to select it.
        forward: ``(x, v_init, k, cfg, keep_charged, final_needed) -> (spikes, charged | None,
            v_final)``, as :func:`spikezoo.neurons.dynamics.forward_sequence`; with
            ``final_needed=False`` it may return ``None`` for ``v_final`` and save writing it.
        backward: ``(grad_spikes, grad_v, charged, v_init, k, cfg, grad_k_needed,
            grad_v_needed) -> (grad_x, grad_v_init, grad_k)``, as
            :func:`spikezoo.neurons.dynamics.backward_sequence`; with ``grad_v_needed=False``
            it may return ``None`` for ``grad_v_init`` and save writing it.
        unavailable_reason: ``x -> None`` if the backend can run on the input ``x``, else a
            message saying why not and what to do.
        backward_from_input: ``(grad_spikes, grad_v, x, v_init, k, cfg, grad_k_needed,
            grad_v_needed) -> (grad_x, grad_v_init, grad_k)``, as
            :func:`~spikezoo.neurons.dynamics.backward_steps_from_input` over the whole
            sequence, for a backend that recomputes the charged membranes from the input ``x``
            in its backward pass: its training forward then keeps no membranes, and autograd
            saves ``x`` (which the layer before holds anyway). ``None``: training keeps the
            membranes.
    """

    name: str
    forward: Callable[..., tuple[Tensor, Tensor | None, Tensor]]
    backward: Callable[..., tuple[Tensor, Tensor, Tensor]]
    unavailable_reason: Callable[[Tensor], str | None]
    backward_from_input: Callable[..., tuple[Tensor, Tensor, Tensor]] | None = None


_REGISTRY: dict[str, Backend] = {}

#: The environment variable that replaces ``backend="auto"``.
BACKEND_ENV = "SPIKEZOO_BACKEND"

#: The order in which ``"auto"`` tries the registered backends.
AUTO_PRIORITY: list[str] = []

#: (backend, device type, dtype, config, loop) that failed under ``"auto"``; skipped since.
_AUTO_FAILURES: set[tuple] = set()


def register_backend(backend: Backend, auto: bool = True) -> None:
    """Make ``backend=backend.name`` available to every neuron.

    With ``auto``, ``"auto"`` considers it after the backends registered before it.
    """
    if backend.name in _REGISTRY or backend.name == "auto":
        raise ValueError(f"backend {backend.name!r} is already registered")
    _REGISTRY[backend.name] = backend
    if auto:
        AUTO_PRIORITY.append(backend.name)


def backend_names() -> list[str]:
    """Every name ``backend=`` accepts: ``"auto"`` and the registered backends."""
    return ["auto", *_REGISTRY]


def validate_backend(backend: str) -> None:
    """Raise ``ValueError`` for a name :func:`backend_names` does not list."""
    if not isinstance(backend, str) or (backend != "auto" and backend not in _REGISTRY):
        raise ValueError(f"unknown backend {backend!r}; expected one of {backend_names()}")


def get_backend(name: str) -> Backend:
    """The registered backend called ``name`` (not ``"auto"``); ``ValueError`` if unknown."""
    validate_backend(name)
    if name == "auto":
        raise ValueError("'auto' is not a backend of its own; use resolve_backend")
    return _REGISTRY[name]


def resolve_backend(backend: str, x: Tensor) -> tuple[str, ...]:
    """The names of the backends to try, in order, for ``backend=`` on the input ``x``.

    A named backend gives itself, or raises ``RuntimeError`` with its reason if it cannot run
    on ``x``. ``"auto"`` gives the available backends of :data:`AUTO_PRIORITY`. Inside an outer
    ``torch.compile`` every neuron runs the eager loops, which that compile traces and fuses,
    and so under ``torch.jit.trace``, which records operators: a kernel called outside PyTorch
    (the C loops, CuPy's) would leave its output out of the recorded graph.
    ``"auto"`` stands for the value of ``SPIKEZOO_BACKEND`` where that is set.
    """
    validate_backend(backend)
    if torch.compiler.is_compiling() or torch.jit.is_tracing():
        return ("torch",)
    if backend == "auto":
        backend = _environment_backend()
    if backend != "auto":
        chosen = _REGISTRY[backend]
        reason = chosen.unavailable_reason(x)
        if reason is not None:
            raise RuntimeError(f"backend={backend!r} cannot run here: {reason}")
        return (backend,)
    return tuple(name for name in AUTO_PRIORITY if _REGISTRY[name].unavailable_reason(x) is None)


def _environment_backend() -> str:
    """The value of ``SPIKEZOO_BACKEND`` (``"auto"`` where unset or empty), validated."""
    name = os.environ.get(BACKEND_ENV, "").strip() or "auto"
    if name != "auto" and name not in _REGISTRY:
        raise ValueError(
            f"environment variable {BACKEND_ENV}={name!r} names no backend; "
            f"expected one of {backend_names()} (or unset it)"
        )
    return name


def _first_success(
    candidates: tuple[str, ...],
    loop: str,
    cfg: NeuronConfig,
    tensor: Tensor,
    call: Callable[[Backend], tuple],
) -> tuple[str, tuple]:
    """``call(backend)`` ("forward" or "backward" ``loop``) on the first of ``candidates`` that
    succeeds on ``tensor``, with its name.

    Failures of all but the last candidate are remembered per (backend, device type, dtype,
    config, loop) and not tried again; the last candidate's errors propagate.
    """
    for name in candidates[:-1]:
        key = (name, tensor.device.type, tensor.dtype, cfg, loop)
        if key in _AUTO_FAILURES:
            continue
        try:
            return name, call(_REGISTRY[name])
        except Exception:
            _logger.debug("%r failed for %s; trying the next", name, key, exc_info=True)
            _AUTO_FAILURES.add(key)
    return candidates[-1], call(_REGISTRY[candidates[-1]])


def run_forward(
    candidates: tuple[str, ...],
    x: Tensor,
    v_init: Tensor,
    k: Tensor,
    cfg: NeuronConfig,
    keep_charged: bool,
    final_needed: bool = True,
) -> tuple[str, tuple[Tensor, Tensor | None, Tensor | None]]:
    """The forward loop on the first of ``candidates`` that succeeds: its name, its result."""
    args = (x, v_init, k, cfg, keep_charged, final_needed)
    return _first_success(candidates, "forward", cfg, x, lambda backend: backend.forward(*args))


def run_training_forward(
    candidates: tuple[str, ...],
    x: Tensor,
    v_init: Tensor,
    k: Tensor,
    cfg: NeuronConfig,
    final_needed: bool = True,
) -> tuple[str, tuple[Tensor, Tensor | None, Tensor | None]]:
    """The forward loop of a training step: as :func:`run_forward`, keeping the charged
    membranes unless the backend that runs it has a ``backward_from_input`` (then ``None``)."""

    def call(backend: Backend) -> tuple:
        return backend.forward(x, v_init, k, cfg, backend.backward_from_input is None, final_needed)

    return _first_success(candidates, "forward", cfg, x, call)


def run_backward(
    candidates: tuple[str, ...],
    grad_spikes: Tensor,
    grad_v: Tensor,
    charged: Tensor,
    v_init: Tensor,
    k: Tensor,
    cfg: NeuronConfig,
    grad_k_needed: bool,
    grad_v_needed: bool = True,
) -> tuple[str, tuple[Tensor, Tensor | None, Tensor]]:
    """The backward loop on the first of ``candidates`` that succeeds: its name, its result."""
    args = (grad_spikes, grad_v, charged, v_init, k, cfg, grad_k_needed, grad_v_needed)
    return _first_success(
        candidates, "backward", cfg, grad_spikes, lambda backend: backend.backward(*args)
    )


def run_backward_from_input(
    candidates: tuple[str, ...],
    grad_spikes: Tensor,
    grad_v: Tensor,
    x: Tensor,
    v_init: Tensor,
    k: Tensor,
    cfg: NeuronConfig,
    grad_k_needed: bool,
    grad_v_needed: bool = True,
) -> tuple[str, tuple[Tensor, Tensor | None, Tensor]]:
    """The backward loop from the input ``x`` of the forward pass, on the first of
    ``candidates`` that succeeds. A backend without ``backward_from_input`` (a fallback after
    the one that ran the forward pass failed) recharges the membranes with its own forward."""

    def call(backend: Backend) -> tuple:
        if backend.backward_from_input is not None:
            return backend.backward_from_input(
                grad_spikes, grad_v, x, v_init, k, cfg, grad_k_needed, grad_v_needed
            )
        _, charged, _ = backend.forward(x, v_init, k, cfg, True, False)
        return backend.backward(
            grad_spikes, grad_v, charged, v_init, k, cfg, grad_k_needed, grad_v_needed
        )

    return _first_success(candidates, "backward", cfg, grad_spikes, call)


register_backend(
    Backend("cupy", cupy.forward, cupy.backward, cupy.unavailable_reason, cupy.backward_from_input)
)
register_backend(
    Backend(
        "native",
        native.forward,
        native.backward,
        native.unavailable_reason,
        native.backward_from_input,
    )
)
register_backend(
    Backend(
        "inductor",
        inductor.forward,
        inductor.backward,
        inductor.unavailable_reason,
        inductor.backward_from_input,
    )
)
register_backend(Backend("torch", eager.forward, eager.backward, eager.unavailable_reason))

#: The names ``backend=`` accepts: ``"auto"`` and the built-in backends.
BACKENDS: tuple[str, ...] = tuple(backend_names())
