"""The registered model families as the tests see them: one small network per family.

Tests about every family parametrise over :data:`FAMILY_NAMES`, which comes from the registry
(``spikezoo.models.FAMILIES``); each family declares its small network (``FAMILY.tiny``).
"""

from __future__ import annotations

import timm
from torch import nn

from spikezoo.models import FAMILIES, TinyConfig, families
from spikezoo.models._registry import timm_module_name

#: Every registered family by its timm module name, e.g. ``"spike_driven_transformer"``.
FAMILY_NAMES = [timm_module_name(path) for path in FAMILIES]

#: The small network of every family, from its declaration (``FAMILY.tiny``).
TINY: dict[str, TinyConfig] = {timm_module_name(family): family.tiny for family in families()}


def tiny_family(family: str) -> TinyConfig:
    """The small configuration of ``family``."""
    return TINY[family]


def tiny(family: str, **overrides) -> nn.Module:
    """The small network of ``family`` (``overrides`` replace its arguments)."""
    config = tiny_family(family)
    return timm.create_model(config.entry_point, **dict(config.args, **overrides))
