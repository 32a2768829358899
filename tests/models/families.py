"""The registered model families as the tests see them: one small network per family.

Tests about every family parametrise over :data:`FAMILY_NAMES`, which comes from the registry
(``spikezoo.models.FAMILIES``). A family registered without an entry in :data:`TINY` fails those
tests (and ``test_every_family_has_a_tiny_configuration``) until it gets one.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import timm
from torch import nn

from spikezoo.models import FAMILIES
from spikezoo.models._registry import timm_module_name

#: Every registered family by its timm module name, e.g. ``"spike_driven_transformer"``.
FAMILY_NAMES = [timm_module_name(path) for path in FAMILIES]


@dataclass(frozen=True)
class TinyFamily:
    """A small network of one family: two feature units or more, 5 classes, T=2."""

    entry_point: str
    args: dict
    #: overrides that leave one attention block at most (for slow tests such as torch.compile);
    #: ``None`` where the family has no such network
    shallow: dict | None = field(default_factory=dict)


TINY: dict[str, TinyFamily] = {
    "spike_driven_transformer": TinyFamily(
        "sdt_8_384",
        dict(embed_dim=32, depth=2, num_heads=4, num_classes=5, time_steps=2),
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
            num_classes=5,
            time_steps=2,
        ),
        shallow=dict(depths=(1, 0)),
    ),
    "spike_driven_transformer_v2": TinyFamily(
        "sdt_v2_8_384",
        dict(embed_dims=(8, 16, 32, 40), num_heads=2, num_classes=5, time_steps=2),
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


def tiny(family: str, **overrides) -> nn.Module:
    """The small network of ``family`` (``overrides`` replace its arguments)."""
    config = tiny_family(family)
    return timm.create_model(config.entry_point, **dict(config.args, **overrides))
