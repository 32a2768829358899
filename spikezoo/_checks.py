"""Argument checks shared by every layer of spikezoo.

Each check returns the value it accepted (converted where it says so) or raises an error that
names the argument, what was expected and what came. Numbers refuse ``True``/``False``.
This module sits at the ground of the package: it imports nothing from spikezoo.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Collection

__all__ = [
    "boolean",
    "choice",
    "divides",
    "fraction",
    "image_size",
    "num_classes",
    "optional_boolean",
    "positive_int",
    "positive_real",
    "real_number",
    "time_constant",
]


def _is_number(value: object, kind: type) -> bool:
    return not isinstance(value, bool) and isinstance(value, kind)


def positive_int(name: str, value: object, minimum: int = 1) -> int:
    """``value`` if it is an integer ``>= minimum``; else ``ValueError``."""
    if not _is_number(value, numbers.Integral):
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value}")
    return int(value)


def fraction(name: str, value: object, upper_closed: bool = True) -> float:
    """``value`` as a float if it is in ``[0, 1]`` (``[0, 1)`` unless ``upper_closed``)."""
    interval = "[0, 1]" if upper_closed else "[0, 1)"
    if not _is_number(value, numbers.Real):
        raise ValueError(f"{name} must be a number in {interval}, got {value!r}")
    value = float(value)
    inside = 0.0 <= value <= 1.0 if upper_closed else 0.0 <= value < 1.0
    if not inside or math.isnan(value):
        raise ValueError(f"{name} must be a number in {interval}, got {value}")
    return value


def positive_real(name: str, value: object) -> float:
    """``value`` as a float if it is a finite real number ``> 0``; else ``ValueError``."""
    if not _is_number(value, numbers.Real):
        raise ValueError(f"{name} must be a positive number, got {value!r}")
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"{name} must be a positive number, got {value}")
    return float(value)


def real_number(name: str, value: object) -> float:
    """``value`` as a float if it is a real number (any sign, inf and nan included); else
    ``TypeError``."""
    if not _is_number(value, numbers.Real):
        raise TypeError(f"{name} must be a real number, got {type(value).__name__} {value!r:.60}")
    return float(value)


def time_constant(name: str, value: object) -> float:
    """``value`` as a float if ``1 < value < inf``, so that the decay ``1/tau`` per step is in
    (0, 1); ``TypeError`` for a non-number, else ``ValueError``."""
    tau = real_number(name, value)
    if not 1.0 < tau < math.inf:
        raise ValueError(
            f"{name} must be > 1 and finite (the membrane decays by 1/tau per step), got {value}"
        )
    return tau


def boolean(name: str, value: object) -> bool:
    """``value`` if it is ``True`` or ``False``; else ``TypeError``."""
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be True or False, got {type(value).__name__} {value!r:.60}")
    return value


def optional_boolean(name: str, value: object) -> bool | None:
    """``value`` if it is ``True``, ``False`` or ``None``; else ``TypeError``."""
    if value is not None and not isinstance(value, bool):
        raise TypeError(
            f"{name} must be True, False or None, got {type(value).__name__} {value!r:.60}"
        )
    return value


def choice(name: str, value: object, choices: Collection) -> object:
    """``value`` if it is one of ``choices``; else ``ValueError`` listing them."""
    if value not in choices:
        raise ValueError(f"{name} must be one of {list(choices)}, got {value!r}")
    return value


def divides(name: str, value: int, whole_name: str, whole: int) -> None:
    """Raise ``ValueError`` unless ``value`` divides ``whole`` (both already checked)."""
    if whole % value:
        raise ValueError(f"{whole_name} ({whole}) must be divisible by {name} ({value})")


def num_classes(value: object) -> int:
    """timm's class count: 0 builds no head; anything but an integer >= 0 is a ``ValueError``."""
    if not _is_number(value, int) or value < 0:
        raise ValueError(
            f"num_classes must be an integer >= 0 (0: no classifier head), got {value!r}"
        )
    return value


def image_size(height: int, width: int, multiple: int, model: str) -> None:
    """Raise ``ValueError`` unless ``height`` and ``width`` are positive multiples of
    ``multiple`` (``model`` names the model in the message)."""
    if height < 1 or width < 1 or height % multiple or width % multiple:
        raise ValueError(
            f"{model} needs H and W to be multiples of {multiple}, got {height}x{width}"
        )
