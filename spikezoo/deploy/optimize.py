"""One call that turns a trained model into its fastest inference form."""

from __future__ import annotations

import copy
import logging
from dataclasses import dataclass

import torch
from torch import nn

from spikezoo import _checks
from spikezoo.deploy import fold
from spikezoo.deploy.fold import FoldReport

__all__ = ["DeployReport", "default_channels_last", "optimize"]

_logger = logging.getLogger(__name__)


@dataclass
class DeployReport:
    """What :func:`optimize` did to a model (``optimized.deploy_report``).

    Attributes:
        folds: the BatchNorm folding (``None`` when ``fold_batchnorm=False``).
        channels_last: whether the convolution weights were converted to channels-last.
        compiled: whether the model is wrapped in ``torch.compile``.
    """

    folds: FoldReport | None
    channels_last: bool
    compiled: bool

    def __str__(self) -> str:
        folds = "BatchNorm not folded" if self.folds is None else str(self.folds)
        return f"{folds}\nchannels_last={self.channels_last}, compiled={self.compiled}"


def default_channels_last(device: torch.device | str) -> bool:
    """Whether :func:`optimize` converts to channels-last on ``device`` by default.

    ``True`` on CUDA, where cuDNN's fastest convolution kernels (tensor cores, TF32 and bf16)
    take NHWC tensors, and on the CPU, where oneDNN's convolutions are NHWC too: measured on
    2 CPU threads at batch 4, SpikingResformer-CIFAR's inference ran about 20% faster, and
    SDT 2-512 as fast (see ``docs/deploy.md``). ``False`` elsewhere.
    """
    return torch.device(device).type in ("cpu", "cuda")


def optimize(
    model: nn.Module,
    *,
    compile: bool = True,
    channels_last: bool | None = None,
    fold_batchnorm: bool = True,
    inplace: bool = False,
) -> nn.Module:
    """The inference form of ``model``: the same outputs, computed faster.

    1. BatchNorm folded into the convolution or linear layer before it, wherever the model's
       ``torch.fx`` graph proves that this changes nothing (see
       :func:`spikezoo.deploy.fold_batchnorm`); the other BatchNorms stay.
    2. Convolution weights in channels-last layout if ``channels_last`` (``None``: the
       device's default, :func:`default_channels_last`).
    3. ``torch.compile`` of the whole model if ``compile``. The neurons then run their eager
       loops, which the outer compile traces and fuses with the layers around them, in one
       graph per block.

    The result is in eval mode with its parameters frozen, and is for inference only: calling
    it in training mode raises ``RuntimeError`` (a folded BatchNorm cannot update its
    statistics). Its outputs equal the model's up to rounding (folding rounds the weights once;
    a float32 model's logits agree within about 1e-5 unless a membrane sits within rounding
    distance of a threshold). ``deploy_report`` on the result (a :class:`DeployReport`, also
    logged at INFO level) says what was folded and what was kept. The compiled model compiles
    on its first call and recompiles for each new input shape.

    Args:
        model: any ``nn.Module``, typically a spikezoo model.
        compile: wrap the model in ``torch.compile``.
        channels_last: convert the convolution weights to channels-last.
        fold_batchnorm: fold BatchNorm layers.
        inplace: change ``model`` itself instead of a deep copy.

    Raises ``TypeError`` for something other than an ``nn.Module`` or a non-bool flag.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    _checks.boolean("compile", compile)
    _checks.boolean("fold_batchnorm", fold_batchnorm)
    _checks.boolean("inplace", inplace)
    _checks.optional_boolean("channels_last", channels_last)
    if not inplace:
        model = copy.deepcopy(model)
    model.eval().requires_grad_(False)
    folds = fold.fold_batchnorm(model) if fold_batchnorm else None
    if channels_last is None:
        channels_last = default_channels_last(_device(model))
    if channels_last:
        model.to(memory_format=torch.channels_last)
    model.deploy_report = DeployReport(folds, channels_last, compile)
    _logger.info("spikezoo.deploy.optimize: %s", model.deploy_report)
    return torch.compile(model) if compile else model


def _device(model: nn.Module) -> torch.device:
    tensor = next(iter([*model.parameters(), *model.buffers()]), None)
    return torch.device("cpu") if tensor is None else tensor.device
