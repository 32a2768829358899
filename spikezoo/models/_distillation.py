"""The distillation head ``head_kd`` of the BICLab families' ``--kd`` training (DeiT-style).

A family with a ``kd`` argument mixes :class:`DistilledHeads` in before
:class:`~spikezoo.models.SpikingVisionModel`, calls :meth:`~DistilledHeads.build_distillation_head`
from its ``build_features``, and declares :func:`check_distillation_head` as its
``ModelFamily.check_checkpoint``.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor, nn

__all__ = ["DistilledHeads", "check_distillation_head"]


class DistilledHeads:
    """``head_kd`` beside ``head``: in training the model returns both heads' logits (as timm's
    distilled DeiT does with ``set_distilled_training``), in eval their mean.

    ``head_kd`` reads :meth:`head_kd_input` of what ``head`` reads (the same by default).
    """

    head_kd: nn.Module | None
    distilled_training: bool

    def build_distillation_head(self, kd: bool) -> None:
        """Name ``head_kd`` among the classifiers (which the base model creates) with ``kd``."""
        self.head_kd = None
        self.classifier_names = ("head", "head_kd") if kd else ("head",)
        self.distilled_training = kd

    def head_kd_input(self, x: Tensor) -> Tensor:
        """What ``head_kd`` reads, from ``x``, the input of ``head`` (``[T, B, C]``)."""
        return x

    def forward_head(self, x: Tensor, pre_logits: bool = False) -> Tensor | tuple[Tensor, Tensor]:
        """``[T, B, C, H, W]`` -> logits ``[B, K]`` (``[T, B, K]`` with ``per_step_logits``).

        With ``kd``: ``(logits, logits_kd)`` in training (unless ``set_distilled_training``
        turned it off), the mean of both heads otherwise.
        """
        if self.head_kd is None or pre_logits:
            return super().forward_head(x, pre_logits)
        with self._compaction():
            x = self.head_input(x)
            logits, logits_kd = self.head(x), self.head_kd(self.head_kd_input(x))
        if not self.per_step_logits:
            logits, logits_kd = logits.mean(0), logits_kd.mean(0)
        if self.training and self.distilled_training:
            return logits, logits_kd
        return (logits + logits_kd) / 2

    @torch.jit.ignore
    def set_distilled_training(self, enable: bool = True) -> None:
        """With ``kd``: whether training-mode calls return both heads (the default) or their mean.

        Raises ``ValueError`` on a model built without ``kd``.
        """
        if self.head_kd is None:
            raise ValueError("set_distilled_training needs a model built with kd=True")
        self.distilled_training = enable


def check_distillation_head(state_dict: Mapping[str, Tensor], model: nn.Module) -> None:
    """Raise ``ValueError`` when the checkpoint has a distillation head and the model not (or
    the reverse): build it with ``kd=True`` (``kd=False``)."""
    has_kd = any(k.startswith("head_kd.") for k in state_dict)
    if has_kd != (model.head_kd is not None):
        raise ValueError(
            "the checkpoint "
            + (
                "has the distillation head head_kd: create the model with kd=True"
                if has_kd
                else "has no distillation head head_kd: create the model with kd=False"
            )
        )
