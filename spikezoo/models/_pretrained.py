"""timm's pretrained config, plus the fields a spiking model's weights come with."""

from __future__ import annotations

from dataclasses import dataclass

from timm.models import PretrainedCfg

__all__ = ["SpikingPretrainedCfg"]


@dataclass
class SpikingPretrainedCfg(PretrainedCfg):
    """A :class:`timm.models.PretrainedCfg` with the time steps and the paper's accuracy."""

    #: time steps T the weights were trained and evaluated with.
    time_steps: int = 4
    #: top-1 accuracy (%) the paper reports for these weights with ``time_steps``, at
    #: ``test_input_size`` when set, else ``input_size``; ``None`` where the paper gives none.
    top1: float | None = None
