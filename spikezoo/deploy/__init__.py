"""Inference deployment: one call folds BatchNorm, picks the memory layout and compiles;
:func:`expand_to_binary` runs integer spikes as binary spikes over virtual time steps.

>>> import timm, torch, spikezoo
>>> from spikezoo.deploy import optimize
>>> model = timm.create_model("sdt_2_256_cifar", num_classes=10, time_steps=2)
>>> fast = optimize(model, compile=False)
>>> len(fast.deploy_report.folds.folded)
17
>>> with torch.inference_mode():
...     fast(torch.randn(1, 3, 32, 32)).shape
torch.Size([1, 10])
"""

from spikezoo.deploy.binary import (
    EXPANDED_LAYERS,
    BinaryOnlySpikes,
    VirtualSteps,
    expand_to_binary,
)
from spikezoo.deploy.fold import (
    FoldedBatchNorm,
    FoldedPair,
    FoldReport,
    fold_batchnorm,
    foldable_pairs,
)
from spikezoo.deploy.optimize import DeployReport, default_channels_last, optimize

__all__ = [
    "EXPANDED_LAYERS",
    "BinaryOnlySpikes",
    "DeployReport",
    "FoldReport",
    "FoldedBatchNorm",
    "FoldedPair",
    "VirtualSteps",
    "default_channels_last",
    "expand_to_binary",
    "fold_batchnorm",
    "foldable_pairs",
    "optimize",
]
