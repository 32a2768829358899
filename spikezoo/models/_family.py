"""A model family's declaration: what is specific to it, as data.

A family module defines its model class (a :class:`~spikezoo.models.SpikingVisionModel`), its
``default_cfgs`` and one ``FAMILY = ModelFamily(...)``; its entry points call
``FAMILY.create(...)``. Everything else (the registry, the checkpoint filter and mismatch hints,
model cards, the tests) reads the declaration and names no family.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, NamedTuple

from torch import Tensor, nn

from spikezoo.models._checkpoint import RenameRule, filter_checkpoint, rename_keys
from spikezoo.models._pretrained import build_spiking_model
from spikezoo.weights import unwrap_state_dict

if TYPE_CHECKING:
    from timm.models._pretrained import DefaultCfg

    from spikezoo.models._base import SpikingVisionModel

__all__ = ["KeyMapping", "ModelFamily", "ReferenceCount", "TinyConfig", "rename_passes"]

#: The authors' keys -> spikezoo's: ``(unwrapped state dict, model) -> renamed state dict``.
KeyMapping = Callable[[dict[str, Tensor], nn.Module], dict[str, Tensor]]


def rename_passes(*passes: Sequence[RenameRule]) -> KeyMapping:
    """A :data:`KeyMapping` applying each list of rules in turn (first matching rule per key)."""

    def remap(state_dict: dict[str, Tensor], model: nn.Module) -> dict[str, Tensor]:
        for rules in passes:
            state_dict = rename_keys(state_dict, list(rules))
        return state_dict

    return remap


class ReferenceCount(NamedTuple):
    """The parameter count of the authors' model that an entry point builds."""

    entry_point: str
    parameters: int
    #: arguments of the entry point, e.g. ``{"kd": True}``
    args: Mapping[str, Any] = MappingProxyType({})
    #: of ``parameters``, those the authors' class creates but its forward never uses (e.g.
    #: LayerNorms it never applies): spikezoo does not build them
    unused: int = 0


@dataclass(frozen=True)
class TinyConfig:
    """A small network of the family for tests and tutorials: two feature units or more, and
    little downsampling (32x32 images give 8x8 tokens or more)."""

    entry_point: str
    #: the architecture arguments that shrink any entry point of the family (widths, depths,
    #: heads, stem); classes and time steps are the caller's (read-only)
    args: Mapping[str, Any]
    #: overrides that leave one attention block at most (for slow tests such as torch.compile);
    #: ``None`` where the family has no such network
    shallow: Mapping[str, Any] | None = field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "args", MappingProxyType(dict(self.args)))


@dataclass(frozen=True, eq=False)  # one declaration per family: compared by identity
class ModelFamily:
    """One model family: its model class and what is specific to it."""

    model_cls: type[SpikingVisionModel]
    #: the family's timm pretrained cfgs (``generate_default_cfgs``), by entry point
    default_cfgs: Mapping[str, DefaultCfg]
    #: the authors' state-dict keys -> spikezoo's (any subset of them)
    authors_keys: KeyMapping
    #: BibTeX of the paper
    citation: str
    #: the authors' parameter counts, which the entry points must reproduce
    reference_counts: tuple[ReferenceCount, ...]
    tiny: TinyConfig
    #: further checks of a mapped checkpoint against the model; raise ``ValueError``
    check_checkpoint: Callable[[Mapping[str, Tensor], nn.Module], None] | None = None

    @property
    def module(self) -> str:
        """Import path of the family module."""
        return self.model_cls.__module__

    @property
    def adapted_prefixes(self) -> tuple[str, ...]:
        """State-dict prefixes that timm adapts after filtering, so a checkpoint may differ there:
        every classifier and first conv named by the family's cfgs."""
        names = set()
        for default_cfg in self.default_cfgs.values():
            for cfg in default_cfg.cfgs.values():
                for value in (cfg.classifier, cfg.first_conv):
                    names.update((value,) if isinstance(value, str) else value or ())
        return tuple(f"{name}." for name in sorted(names))

    def create(self, variant: str, pretrained: bool = False, **kwargs: Any) -> nn.Module:
        """Build entry point ``variant`` (what every ``@register_model`` function returns)."""
        return build_spiking_model(
            self.model_cls, variant, pretrained, self.checkpoint_filter_fn, **kwargs
        )

    def remap_state_dict(self, state_dict: Mapping, model: nn.Module) -> dict[str, Tensor]:
        """Rename the authors' keys (of a state dict or a training checkpoint) to spikezoo's;
        no checks."""
        return self.authors_keys(unwrap_state_dict(state_dict), model)

    def checkpoint_filter_fn(self, state_dict: Mapping, model: nn.Module) -> dict[str, Tensor]:
        """Map the authors' state dict, a training checkpoint holding one (``{"state_dict": ...}``,
        ``{"model": ...}``, ``module.`` prefixes) or spikezoo's own to ``model``'s keys.

        Raises :class:`~spikezoo.models.CheckpointMismatchError` if the result does not fit
        ``model`` outside :attr:`adapted_prefixes`, and ``ValueError`` where
        :attr:`check_checkpoint` does.
        """
        mapped = filter_checkpoint(
            state_dict, model, self.remap_state_dict, exempt=self.adapted_prefixes
        )
        if self.check_checkpoint is not None:
            self.check_checkpoint(mapped, model)
        return mapped
