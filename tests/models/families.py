"""The registered model families as the tests see them: one small network per family.

Tests about every family parametrise over :data:`FAMILY_NAMES`, which comes from the registry
(``spikezoo.models.FAMILIES``); each family declares its small network (``FAMILY.tiny``).

Every test that needs a small model gets it here, through :func:`tiny` (the model) or
:func:`tiny_family` (its arguments), never by writing widths of its own.
"""

from __future__ import annotations

import pytest
import timm
from timm.models import model_entrypoint, split_model_name_tag
from torch import nn

from spikezoo.models import FAMILIES, TinyConfig, families
from spikezoo.models._registry import timm_module_name

#: Every registered family by its timm module name, e.g. ``"spike_driven_transformer"``.
FAMILY_NAMES = [timm_module_name(path) for path in FAMILIES]

#: The classes and time steps of every small network (:func:`tiny` passes them).
NUM_CLASSES, TIME_STEPS = 5, 2

#: The small network of every family, from its declaration (``FAMILY.tiny``).
TINY: dict[str, TinyConfig] = {timm_module_name(family): family.tiny for family in families()}


def tiny_family(family: str) -> TinyConfig:
    """The small configuration of ``family`` (its architecture arguments)."""
    return TINY[family]


def tiny(family: str, entry_point: str | None = None, **overrides) -> nn.Module:
    """The small network of ``family``, with :data:`NUM_CLASSES` classes and :data:`TIME_STEPS`.

    Args:
        family: a name of :data:`FAMILY_NAMES`.
        entry_point: another entry point or pretrained tag of the family to shrink (e.g.
            ``"sdt_2_256_cifar.cifar10"``, for its input size, channels or pretrained cfg);
            default: the family's :attr:`~spikezoo.models.TinyConfig.entry_point`.
        **overrides: replace any argument, e.g. ``time_steps=4``.
    """
    config = tiny_family(family)
    name = entry_point or config.entry_point
    architecture = split_model_name_tag(name)[0]
    owner = timm_module_name(model_entrypoint(architecture).__module__)
    if owner != family:
        raise ValueError(f"{architecture!r} belongs to the family {owner!r}, not to {family!r}")
    args = dict(config.args, num_classes=NUM_CLASSES, time_steps=TIME_STEPS)
    return timm.create_model(name, **dict(args, **overrides))


def small_and_full_size(entry_points: list[str]) -> list:
    """Test cases: every family's small network, then ``entry_points`` at full size (``slow``).

    :func:`build` makes the model of a case.
    """
    return [*FAMILY_NAMES, *(pytest.param(name, marks=pytest.mark.slow) for name in entry_points)]


def build(case: str, **kwargs) -> nn.Module:
    """The small network of the family ``case``, or the entry point ``case`` at full size."""
    return tiny(case, **kwargs) if case in FAMILY_NAMES else timm.create_model(case, **kwargs)
