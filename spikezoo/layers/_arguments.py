"""Constructor argument checks: a ``ValueError`` that names the argument and what came."""

from __future__ import annotations

import math
import numbers


def positive_int(name: str, value: object, minimum: int = 1) -> int:
    """``value`` if it is an integer ``>= minimum`` (``True``/``False`` are refused)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value}")
    return int(value)


def fraction(name: str, value: object, upper_closed: bool = True) -> float:
    """``value`` if it is a real number in ``[0, 1]`` (``[0, 1)`` unless ``upper_closed``)."""
    interval = "[0, 1]" if upper_closed else "[0, 1)"
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ValueError(f"{name} must be a number in {interval}, got {value!r}")
    value = float(value)
    inside = 0.0 <= value <= 1.0 if upper_closed else 0.0 <= value < 1.0
    if not inside or math.isnan(value):
        raise ValueError(f"{name} must be a number in {interval}, got {value}")
    return value


def positive_real(name: str, value: object) -> float:
    """``value`` if it is a finite real number ``> 0``."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ValueError(f"{name} must be a positive number, got {value!r}")
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"{name} must be a positive number, got {value}")
    return float(value)


def divides(name: str, value: int, whole_name: str, whole: int) -> None:
    """Raise unless ``value`` divides ``whole`` (both already checked to be positive)."""
    if whole % value:
        raise ValueError(f"{whole_name} ({whole}) must be divisible by {name} ({value})")
