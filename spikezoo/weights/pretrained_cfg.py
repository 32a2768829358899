"""timm's pretrained config, plus the fields a spiking model's weights come with."""

from __future__ import annotations

from dataclasses import dataclass

from timm.models import PretrainedCfg

from spikezoo.weights.authors import AuthorsFile

__all__ = ["SpikingPretrainedCfg"]


@dataclass
class SpikingPretrainedCfg(PretrainedCfg):
    """A :class:`timm.models.PretrainedCfg` with the paper's accuracy and the authors' file.

    The time steps T are a model argument (``model.time_steps``), not part of the cfg: the entry
    point's default is the T the weights were trained with, and an exported ``config.json``
    records it under ``model_args``.
    """

    #: top-1 accuracy (%) the paper reports for these weights with ``time_steps``, at
    #: ``test_input_size`` when set, else ``input_size``; ``None`` where the paper gives none.
    top1: float | None = None
    #: where the authors published these weights; ``None`` where they released none. A dict
    #: (a cfg read back from ``model.pretrained_cfg`` or JSON) becomes an :class:`AuthorsFile`.
    authors_file: AuthorsFile | None = None
    #: architecture arguments these weights need that their shapes do not show (e.g.
    #: ``kd=True``, or the integer spike levels); entry points built for these weights get
    #: them unless the caller passes their own (``spikezoo.models._pretrained.weights_model_args``).
    model_args: dict | None = None

    def __post_init__(self) -> None:
        if isinstance(self.authors_file, dict):
            self.authors_file = AuthorsFile(**self.authors_file)
