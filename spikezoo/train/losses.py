"""The training loss: cross-entropy with timm's label smoothing / Mixup / CutMix, or TET."""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import TYPE_CHECKING

import torch
from torch import Tensor, nn

from spikezoo.train.config import LossConfig

if TYPE_CHECKING:
    from timm.data import Mixup

__all__ = ["build_loss", "tet_loss"]


def tet_loss(
    criterion: Callable[[Tensor, Tensor], Tensor],
    outputs: Tensor,
    targets: Tensor,
    lam: float,
    phi: float,
) -> Tensor:
    """TET (Deng et al., ICLR 2022): ``criterion`` averaged over the steps of ``[T, B, K]``.

    ``(1 - lam) * mean_t criterion(outputs[t], targets) + lam * MSE(outputs, phi)``.
    """
    per_step = torch.stack([criterion(step, targets) for step in outputs]).mean()
    if lam == 0:
        return per_step
    return (1 - lam) * per_step + lam * nn.functional.mse_loss(
        outputs, torch.full_like(outputs, phi)
    )


def build_loss(
    loss: LossConfig, num_classes: int
) -> tuple[Mixup | None, Callable[[Tensor, Tensor], Tensor]]:
    """timm's ``Mixup`` (or ``None``) and the training loss of ``(outputs, targets)``."""
    from timm.data import Mixup
    from timm.loss import LabelSmoothingCrossEntropy, SoftTargetCrossEntropy

    mixup = None
    if loss.mixup > 0 or loss.cutmix > 0:
        mixup = Mixup(
            mixup_alpha=loss.mixup,
            cutmix_alpha=loss.cutmix,
            prob=loss.mixup_prob,
            switch_prob=loss.mixup_switch_prob,
            label_smoothing=loss.smoothing,
            num_classes=num_classes,
        )
        criterion: nn.Module = SoftTargetCrossEntropy()
    elif loss.smoothing > 0:
        criterion = LabelSmoothingCrossEntropy(loss.smoothing)
    else:
        criterion = nn.CrossEntropyLoss()
    if loss.tet:
        return mixup, partial(tet_loss, criterion, lam=loss.tet_lambda, phi=loss.tet_phi)
    return mixup, criterion
