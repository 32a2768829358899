"""The papers' building blocks as drop-in ``nn.Module``s over ``[T, B, C, H, W]`` membranes.

Example: a custom spiking CNN with spike-driven and dual spike self-attention.

    >>> import functools, torch
    >>> from torch import nn
    >>> from spikezoo.layers import DSSA, SDSA, ConvBN
    >>> from spikezoo.neurons import MultiStepLIF
    >>> class Net(nn.Module):
    ...     def __init__(self, time_steps=2):
    ...         super().__init__()
    ...         neuron = functools.partial(MultiStepLIF, surrogate="atan")
    ...         self.time_steps = time_steps
    ...         self.stem = ConvBN(3, 32, 3)                       # no neuron: reads pixels
    ...         self.sdsa = SDSA(32, num_heads=4, neuron=neuron)
    ...         self.dssa = DSSA(32, num_heads=2, patch_size=2, neuron=neuron)
    ...         self.head = nn.Linear(32, 10)
    ...     def forward(self, images):                             # [B, 3, H, W]
    ...         x = images.unsqueeze(0).repeat(self.time_steps, 1, 1, 1, 1)
    ...         x = self.dssa(self.sdsa(self.stem(x)))             # [T, B, 32, H, W]
    ...         return self.head(x.mean((-2, -1))).mean(0)         # [B, 10]
    >>> Net()(torch.randn(4, 3, 16, 16)).shape
    torch.Size([4, 10])
"""

from spikezoo.layers.attention import HeadLayout, SpikingAttention
from spikezoo.layers.batch_norms import LayerThenBatchNorm, batch_norm, batch_statistics
from spikezoo.layers.bn_neuron import batch_norm_fire, set_bn_neuron_fusion
from spikezoo.layers.conv_layout import convolve
from spikezoo.layers.defaults import (
    QKFORMER_NEURON,
    RESFORMER_NEURON,
    SDT_NEURON,
    SPIKFORMER_NEURON,
    SPIKINGFORMER_DVS_NEURON,
)
from spikezoo.layers.dssa import DSSA, Downsample, freeze_firing_rates
from spikezoo.layers.e_spikeformer import IntegerLinearAttention, SpikingSepConv
from spikezoo.layers.metaformer import (
    BNAndPad,
    LinearSpikingAttention,
    RepConv,
    SepConv,
    SpikingConvBlock,
    SpikingTokenMLP,
)
from spikezoo.layers.mlp import GWSFFN, SpikingMLP
from spikezoo.layers.pointwise import PointwiseProjection, SpikingPointwiseBlock
from spikezoo.layers.pooling import MaxPool2d, max_pool2d
from spikezoo.layers.qkformer import SEWPatchEmbedding, TokenQKAttention
from spikezoo.layers.renamed_children import LoadsRenamedChildren, rename_old_keys
from spikezoo.layers.residual_sums import residual_sum
from spikezoo.layers.sdsa import SDSA, dilate
from spikezoo.layers.spike_products import SpikingHadamard, SpikingMatmul, SpikingSum
from spikezoo.layers.sps import SPS, parse_pooling
from spikezoo.layers.ssa import SSA
from spikezoo.layers.temporal import ConvBN, DropPath, NeuronFactory, PerStep, check_tbchw, per_step

__all__ = [
    "DSSA",
    "GWSFFN",
    "QKFORMER_NEURON",
    "RESFORMER_NEURON",
    "SDSA",
    "SDT_NEURON",
    "SPIKFORMER_NEURON",
    "SPIKINGFORMER_DVS_NEURON",
    "SPS",
    "SSA",
    "BNAndPad",
    "ConvBN",
    "Downsample",
    "DropPath",
    "HeadLayout",
    "IntegerLinearAttention",
    "LayerThenBatchNorm",
    "LinearSpikingAttention",
    "LoadsRenamedChildren",
    "MaxPool2d",
    "NeuronFactory",
    "PerStep",
    "PointwiseProjection",
    "RepConv",
    "SEWPatchEmbedding",
    "SepConv",
    "SpikingAttention",
    "SpikingConvBlock",
    "SpikingHadamard",
    "SpikingMLP",
    "SpikingMatmul",
    "SpikingPointwiseBlock",
    "SpikingSepConv",
    "SpikingSum",
    "SpikingTokenMLP",
    "TokenQKAttention",
    "batch_norm",
    "batch_norm_fire",
    "batch_statistics",
    "check_tbchw",
    "convolve",
    "dilate",
    "freeze_firing_rates",
    "max_pool2d",
    "parse_pooling",
    "per_step",
    "rename_old_keys",
    "residual_sum",
    "set_bn_neuron_fusion",
]
