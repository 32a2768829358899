"""The registered model families as the tests see them: one small network per family.

Tests about every family parametrise over :data:`FAMILY_NAMES`, which comes from the registry
(``spikezoo.models.FAMILIES``). A family registered without an entry in :data:`TINY` fails those
tests (and ``test_every_family_has_a_tiny_configuration``) until it gets one.

Every test that needs a small model gets it here, through :func:`tiny` (the model) or
:func:`tiny_family` (its arguments): this module is the one place that says how small.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

import pytest
import timm
from timm.models import model_entrypoint, split_model_name_tag
from torch import nn

from spikezoo.models import FAMILIES
from spikezoo.models._registry import timm_module_name

#: Every registered family by its timm module name, e.g. ``"spike_driven_transformer"``.
FAMILY_NAMES = [timm_module_name(path) for path in FAMILIES]

#: The classes and time steps of every small network (:func:`tiny` passes them).
NUM_CLASSES, TIME_STEPS = 5, 2


@dataclass(frozen=True)
class TinyFamily:
    """A small network of one family: two feature units or more, little downsampling (so that
    32x32 images give 8x8 tokens or more)."""

    entry_point: str
    #: the architecture arguments that shrink any entry point of the family (widths, depths,
    #: heads); the classes and time steps are :data:`NUM_CLASSES` and :data:`TIME_STEPS`
    args: Mapping[str, Any]
    #: overrides that leave one attention block at most (for slow tests such as torch.compile);
    #: ``None`` where the family has no such network
    shallow: dict | None = field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "args", MappingProxyType(dict(self.args)))  # shared: read-only


TINY: dict[str, TinyFamily] = {
    "spike_driven_transformer": TinyFamily(
        "sdt_8_384",
        dict(embed_dim=32, depth=2, num_heads=4, pooling_stat="0011"),
        shallow=dict(depth=1),
    ),
    "spiking_resformer": TinyFamily(
        "spikingresformer_ti",
        dict(
            embed_dims=(16, 32),
            num_heads=(1, 2),
            depths=(1, 1),
            patch_sizes=(2, 1),
            group_size=16,
            stem="conv3x3",
        ),
        shallow=dict(depths=(1, 0)),
    ),
    "spike_driven_transformer_v2": TinyFamily(
        "sdt_v2_8_384",
        dict(embed_dims=(8, 16, 32, 40), num_heads=2),
        shallow=None,  # always 6 + 2 transformer blocks (the authors' code)
    ),
}


def tiny_family(family: str) -> TinyFamily:
    """The small configuration of ``family``, or an error saying where to add one."""
    if family not in TINY:
        raise LookupError(
            f"no small test configuration for the model family {family!r}: "
            "add one to TINY in tests/models/families.py"
        )
    return TINY[family]


def tiny(family: str, entry_point: str | None = None, **overrides) -> nn.Module:
    """The small network of ``family``, with :data:`NUM_CLASSES` classes and :data:`TIME_STEPS`.

    Args:
        family: a name of :data:`FAMILY_NAMES`.
        entry_point: another entry point or pretrained tag of the family to shrink (e.g.
            ``"sdt_2_256_cifar.cifar10"``, for its input size, channels or pretrained cfg);
            default: the family's :attr:`TinyFamily.entry_point`.
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
