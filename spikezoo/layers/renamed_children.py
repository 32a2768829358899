"""State dicts saved before a layer renamed one of its children still load.

A layer that renamed a child derives from :class:`LoadsRenamedChildren` and lists the rename in
``renamed_children`` (old name -> new name), e.g. ``ConvBN`` whose neuron was ``lif`` and is
``neuron``: a PLIF's saved ``...lif.w`` loads as ``...neuron.w``. ``load_state_dict`` renames
such keys by itself; :func:`rename_old_keys` renames them in a whole state dict, for code that
compares keys before loading (the models' ``checkpoint_filter_fn``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import ClassVar

from torch import Tensor, nn

__all__ = ["LoadsRenamedChildren", "rename_old_keys"]


class LoadsRenamedChildren(nn.Module):
    """A module whose ``load_state_dict`` also reads its children's keys under their old names.

    A key under an old name is renamed unless the state dict also has it under the new name
    (then it stays, and a strict load reports it as unexpected).
    """

    #: old child name -> current child name
    renamed_children: ClassVar[dict[str, str]] = {}

    def _load_from_state_dict(self, state_dict: dict[str, Tensor], prefix: str, *args) -> None:
        for key in [key for key in state_dict if key.startswith(prefix)]:
            new_key = _renamed(key, prefix, self.renamed_children)
            if new_key != key and new_key not in state_dict:
                state_dict[new_key] = state_dict.pop(key)
        super()._load_from_state_dict(state_dict, prefix, *args)


def rename_old_keys(state_dict: Mapping[str, Tensor], model: nn.Module) -> dict[str, Tensor]:
    """``state_dict`` with the keys of ``model``'s renamed children under their current names.

    Keys that already have the current name, and all others, pass through unchanged.
    """
    renames = [
        (f"{name}." if name else "", module.renamed_children)
        for name, module in model.named_modules()
        if isinstance(module, LoadsRenamedChildren)
    ]
    renamed = {}
    for key, value in state_dict.items():
        new_key = key
        for prefix, children in renames:
            new_key = _renamed(new_key, prefix, children)
        renamed[key if new_key in state_dict else new_key] = value
    return renamed


def _renamed(key: str, prefix: str, children: Mapping[str, str]) -> str:
    """``key`` with the child right after ``prefix`` renamed, if ``children`` renames it."""
    if not key.startswith(prefix):
        return key
    child, dot, rest = key[len(prefix) :].partition(".")
    if not dot or child not in children:
        return key
    return f"{prefix}{children[child]}.{rest}"
