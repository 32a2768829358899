"""timm's pretrained config, plus the fields a spiking model's weights come with."""

from __future__ import annotations

from dataclasses import dataclass

from timm.models import PretrainedCfg, generate_default_cfgs

__all__ = ["SpikingPretrainedCfg", "spikezoo_default_cfgs"]


@dataclass
class SpikingPretrainedCfg(PretrainedCfg):
    """A :class:`timm.models.PretrainedCfg` with the time steps and the paper's accuracy."""

    #: time steps T the weights were trained and evaluated with.
    time_steps: int = 4
    #: top-1 accuracy (%) the paper reports for these weights with ``time_steps``, at
    #: ``test_input_size`` when set, else ``input_size``; ``None`` where the paper gives none.
    top1: float | None = None


def spikezoo_default_cfgs(defaults: dict, tags: dict[str, dict]) -> dict:
    """timm default cfgs for ``"model.tag"`` names: ``defaults`` updated by each tag's fields.

    The weights of ``model.tag`` live in the Hugging Face Hub repository ``spikezoo/model.tag``.
    """
    return generate_default_cfgs(
        {
            tag: SpikingPretrainedCfg(**{**defaults, "hf_hub_id": f"spikezoo/{tag}", **fields})
            for tag, fields in tags.items()
        }
    )
