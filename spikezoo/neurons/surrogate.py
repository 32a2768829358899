"""Surrogate gradients for the Heaviside spike function.

A spiking neuron fires ``s = H(u)`` with ``u = h - v_threshold`` and ``H(u) = 1 if u >= 0``.
``H`` has no useful derivative, so back-propagation replaces ``dS/du`` with a smooth
surrogate. The formulas are spikingjelly's, number for number:

- ``sigmoid`` (default ``alpha = 4``): ``alpha * sig(alpha * u) * (1 - sig(alpha * u))``
- ``atan`` (default ``alpha = 2``): ``(alpha / 2) / (1 + (pi / 2 * alpha * u) ** 2)``

Register your own with :func:`register_surrogate`.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = ["Surrogate", "get_surrogate", "register_surrogate", "surrogate_names"]


@dataclass(frozen=True)
class Surrogate:
    """A named surrogate derivative ``grad(u, alpha)`` with its default ``alpha``."""

    name: str
    grad: Callable[[Tensor, float], Tensor]
    default_alpha: float


def _sigmoid_grad(u: Tensor, alpha: float) -> Tensor:
    sig = torch.sigmoid(u * alpha)
    return (1.0 - sig) * sig * alpha


def _atan_grad(u: Tensor, alpha: float) -> Tensor:
    return alpha / 2 / (1 + (math.pi / 2 * alpha * u) ** 2)


_REGISTRY: dict[str, Surrogate] = {
    "sigmoid": Surrogate("sigmoid", _sigmoid_grad, 4.0),
    "atan": Surrogate("atan", _atan_grad, 2.0),
}


def surrogate_names() -> list[str]:
    """The names :func:`get_surrogate` accepts, sorted."""
    return sorted(_REGISTRY)


def get_surrogate(name: str) -> Surrogate:
    """Look up a surrogate by name; an unknown name raises ``ValueError`` listing the known ones."""
    try:
        return _REGISTRY[name]
    except (KeyError, TypeError):
        raise ValueError(
            f"unknown surrogate {name!r}; expected one of {surrogate_names()}"
        ) from None


def register_surrogate(
    name: str, grad: Callable[[Tensor, float], Tensor], default_alpha: float
) -> Surrogate:
    """Make ``surrogate=name`` available to every spikezoo neuron.

    ``grad(u, alpha)`` must be built from elementwise torch operations (it runs inside the
    fused neuron kernels) and return ``dS/du`` at ``u = h - v_threshold``.
    """
    if name in _REGISTRY:
        raise ValueError(f"surrogate {name!r} is already registered")
    if not (math.isfinite(default_alpha) and default_alpha > 0):
        raise ValueError(f"default_alpha must be finite and > 0, got {default_alpha}")
    surrogate = Surrogate(name, grad, float(default_alpha))
    _REGISTRY[name] = surrogate
    return surrogate
