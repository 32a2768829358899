"""Pointwise (1x1) projections over tokens, as E-SpikeFormer's large models use them.

In the MAE-pretrained models of E-SpikeFormer (Yao et al., TPAMI 2025; the authors'
``Model_Large/spikformer.py``), q, k, v and the attention output are projected by two 1x1
convolutions over the tokens, each followed by BatchNorm (the authors' ``RepConv``), and the
83M model opens every block with a spiking residual branch of the same kind (their
``RepConv2``).
"""

from __future__ import annotations

from torch import Tensor, nn

from spikezoo._checks import positive_int
from spikezoo.layers.batch_norms import LayerThenBatchNorm
from spikezoo.layers.temporal import NeuronFactory, check_tbchw, per_step

__all__ = ["PointwiseProjection", "SpikingPointwiseBlock"]


class PointwiseProjection(nn.Module):
    """``BN(conv1x1(BN(conv1x1(x))))`` on every token, without biases.

    ``[N, in_chans, *spatial]`` -> ``[N, out_chans, *spatial]`` (tokens ``[N, C, L]`` or maps
    ``[N, C, H, W]``). A per-frame module: fold time into the batch
    (:class:`~spikezoo.layers.PerStep`) for ``[T, B, C, H, W]``.

    Args:
        in_chans: input channels.
        out_chans: output channels.
        hidden_ratio: width between the two convolutions, ``int(in_chans * hidden_ratio)``
            (1.5 in the attention of the authors' large models, 1 in their 83M model's branch).
    """

    def __init__(self, in_chans: int, out_chans: int, hidden_ratio: float = 1.5) -> None:
        super().__init__()
        positive_int("in_chans", in_chans)
        positive_int("out_chans", out_chans)
        if not hidden_ratio > 0:
            raise ValueError(f"hidden_ratio must be positive, got {hidden_ratio!r}")
        hidden = positive_int("int(in_chans * hidden_ratio)", int(in_chans * hidden_ratio))
        self.conv1 = LayerThenBatchNorm(
            nn.Conv1d(in_chans, hidden, 1, bias=False), nn.BatchNorm1d(hidden)
        )
        self.conv2 = LayerThenBatchNorm(
            nn.Conv1d(hidden, out_chans, 1, bias=False), nn.BatchNorm1d(out_chans)
        )

    def forward(self, x: Tensor) -> Tensor:
        """``x [N, in_chans, *spatial]`` -> ``[N, out_chans, *spatial]``."""
        out = self.conv2(self.conv1(x.flatten(2)))
        return out.unflatten(2, x.shape[2:])


class SpikingPointwiseBlock(nn.Module):
    """A residual spiking pointwise branch: ``x + P(neuron(x))``, ``P`` a
    :class:`PointwiseProjection` of width ``dim``.

    ``[T, B, dim, H, W]`` -> same shape. E-SpikeFormer's 83M model opens each of its blocks
    with one (``hidden_ratio=1``), without layer scale or stochastic depth.

    Args:
        dim: channels.
        neuron: factory of the spiking neuron.
        hidden_ratio: width between the two convolutions, as a multiple of ``dim``.
    """

    def __init__(self, dim: int, neuron: NeuronFactory, hidden_ratio: float = 1.0) -> None:
        super().__init__()
        self.dim = positive_int("dim", dim)
        self.input_neuron = neuron()
        self.projection = PointwiseProjection(dim, dim, hidden_ratio)

    def forward(self, x: Tensor) -> Tensor:
        """``x [T, B, dim, H, W]`` -> same shape."""
        check_tbchw(x, self.dim, "SpikingPointwiseBlock")
        return x + per_step(self.projection, self.input_neuron(x))
