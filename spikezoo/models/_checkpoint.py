"""Turning foreign checkpoints into spikezoo state dicts, and saying clearly when they don't fit."""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from functools import cache, partial

import torch
from torch import Tensor, nn

from spikezoo.layers.renamed_children import rename_old_keys
from spikezoo.weights import unwrap_state_dict

__all__ = [
    "CheckpointMismatchError",
    "RenameRule",
    "as_conv1x1",
    "check_state_dict",
    "filter_checkpoint",
    "guess_architecture",
    "rename_key",
    "rename_keys",
]

#: ``(pattern, replacement)`` for :func:`re.sub` on a key; replacement ``None`` drops the key.
RenameRule = tuple[str, str | Callable[[re.Match], str] | None]


class CheckpointMismatchError(ValueError):
    """A checkpoint whose tensors do not fit the model it is loaded into.

    ``missing``, ``unexpected`` and ``mismatched`` (``key: checkpoint shape vs model shape``)
    list every problem; ``likely_model`` names the registered model the file fits best.
    """

    def __init__(
        self,
        message: str,
        missing: list[str],
        unexpected: list[str],
        mismatched: list[str],
        likely_model: str | None,
    ) -> None:
        super().__init__(message)
        self.missing = missing
        self.unexpected = unexpected
        self.mismatched = mismatched
        self.likely_model = likely_model


def rename_key(key: str, rules: list[RenameRule]) -> str | None:
    """Apply the first rule whose pattern matches ``key``; ``None`` if that rule drops it."""
    for pattern, replacement in rules:
        if re.search(pattern, key):
            return None if replacement is None else re.sub(pattern, replacement, key)
    return key


def rename_keys(state_dict: Mapping[str, Tensor], rules: list[RenameRule]) -> dict[str, Tensor]:
    """:func:`rename_key` over a state dict; unmatched keys pass through."""
    renamed = {}
    for key, value in state_dict.items():
        new_key = rename_key(key, rules)
        if new_key is not None:
            renamed[new_key] = value
    return renamed


def as_conv1x1(state_dict: Mapping[str, Tensor], model: nn.Module) -> dict[str, Tensor]:
    """``state_dict`` with the weights of ``Linear`` (``[out, in]``) and 1x1 ``Conv1d``
    (``[out, in, 1]``) layers reshaped to the ``[out, in, 1, 1]`` of ``model``'s 1x1 ``Conv2d``
    of the same key; every other tensor unchanged (a :data:`~spikezoo.models.KeyMapping` pass
    after renaming)."""
    shapes = {key: value.shape for key, value in model.state_dict().items()}
    fitted = {}
    for key, value in state_dict.items():
        shape = shapes.get(key)
        if (
            shape is not None
            and value.dim() in (2, 3)
            and len(shape) == 4
            and tuple(shape[2:]) == (1, 1)
            and value.shape[:2] == shape[:2]
            and value.numel() == shape.numel()
        ):
            value = value.reshape(shape)
        fitted[key] = value
    return fitted


def filter_checkpoint(
    checkpoint: Mapping,
    model: nn.Module,
    remap: Callable[[Mapping[str, Tensor], nn.Module], dict[str, Tensor]],
    exempt: tuple[str, ...],
) -> dict[str, Tensor]:
    """Unwrap, rename with ``remap`` and check a checkpoint for ``model`` (a family's filter).

    Keys of children that spikezoo's layers renamed since (see
    :mod:`spikezoo.layers.renamed_children`) get their current names.
    """
    original = unwrap_state_dict(checkpoint)
    mapped = rename_old_keys(remap(original, model), model)
    check_state_dict(mapped, model, exempt=exempt, original=original)
    return mapped


def check_state_dict(
    state_dict: Mapping[str, Tensor],
    model: nn.Module,
    exempt: tuple[str, ...],
    original: Mapping[str, Tensor],
) -> None:
    """Raise :class:`CheckpointMismatchError` unless ``state_dict`` fits ``model`` exactly.

    Keys starting with one of ``exempt`` (the classifier and the first conv, which timm adapts
    to ``num_classes`` / ``in_chans`` after filtering) are not compared. ``original`` is the
    checkpoint before renaming; the error names the registered model it fits best.
    """
    expected = {k: v.shape for k, v in model.state_dict().items() if not k.startswith(exempt)}
    given = {k: v.shape for k, v in state_dict.items() if not k.startswith(exempt)}
    missing = sorted(expected.keys() - given.keys())
    unexpected = sorted(given.keys() - expected.keys())
    mismatched = [
        f"{k}: checkpoint {tuple(given[k])} vs model {tuple(expected[k])}"
        for k in sorted(expected.keys() & given.keys())
        if given[k] != expected[k]
    ]
    if not (missing or unexpected or mismatched):
        return
    lines = [f"the checkpoint does not fit {type(model).__name__}:"]
    for title, items in (
        ("missing keys", missing),
        ("unexpected keys", unexpected),
        ("shape mismatches", mismatched),
    ):
        if items:
            shown = ", ".join(items[:8]) + (
                f", ... ({len(items) - 8} more)" if len(items) > 8 else ""
            )
            lines.append(f"  {len(items)} {title}: {shown}")
    likely = guess_architecture(original)
    if likely:
        lines.append(f"  it most likely belongs to {likely!r}")
    raise CheckpointMismatchError("\n".join(lines), missing, unexpected, mismatched, likely)


def guess_architecture(state_dict: Mapping[str, Tensor]) -> str | None:
    """The registered spikezoo model whose tensors best match ``state_dict`` (None: no match).

    Every entry point of every family in the registry is built on the meta device (once per
    process) and compared with ``state_dict`` mapped by its family's ``remap_state_dict``.
    """
    import timm

    # imported here: the families import this module
    from spikezoo.models._registry import families, timm_module_name

    best_score, best_name = 0.5, None
    for family in families():
        for name in timm.list_models(module=timm_module_name(family)):
            model = _meta_model(name)
            score = shape_overlap(family.remap_state_dict(state_dict, model), model)
            if score > best_score:
                best_score, best_name = score, name
    return best_name


@cache
def _meta_model(name: str) -> nn.Module:
    """The entry point ``name`` with its default arguments, on the meta device."""
    import timm

    return build_on_meta(partial(timm.create_model, name))


def shape_overlap(state_dict: Mapping[str, Tensor], model: nn.Module) -> float:
    """Fraction of ``(key, shape)`` pairs shared by ``state_dict`` and ``model`` (Jaccard)."""
    ours = {(k, tuple(v.shape)) for k, v in model.state_dict().items()}
    theirs = {(k, tuple(v.shape)) for k, v in state_dict.items()}
    return len(ours & theirs) / max(len(ours | theirs), 1)


def build_on_meta(builder: Callable[[], nn.Module]) -> nn.Module:
    """Build a model without allocating its weights."""
    with torch.device("meta"):
        return builder()
