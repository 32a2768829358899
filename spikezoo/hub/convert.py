"""Converting a checkpoint (the authors' or spikezoo's) into a timm model directory."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import timm
from timm.models import PretrainedCfg
from timm.models._hub import save_config_for_hf
from torch import nn

from spikezoo.hub.model_card import model_card
from spikezoo.models._pretrained import check_finite_forward
from spikezoo.models._registry import family_of
from spikezoo.weights import cache, file_sha256, read_checkpoint, save_state_dict

__all__ = ["convert_checkpoint", "full_name"]

_PRETRAINED_CFG_FIELDS = {f.name for f in dataclasses.fields(PretrainedCfg)}


def full_name(model: nn.Module) -> str:
    """``architecture.tag`` of a model built by timm."""
    cfg = model.pretrained_cfg
    return f"{cfg['architecture']}.{cfg['tag']}" if cfg.get("tag") else cfg["architecture"]


def convert_checkpoint(
    source: str | Path,
    model_name: str,
    out_dir: str | Path,
    model_args: dict | None = None,
    source_url: str | None = None,
) -> dict:
    """Convert ``source`` for ``model_name`` (``model`` or ``model.tag``) into ``out_dir``.

    The file is read safely, mapped by the family's ``checkpoint_filter_fn``, loaded strictly
    and checked with one forward pass whose logits must be finite. ``out_dir`` then gets
    ``model.safetensors``, a ``config.json`` that timm's ``local-dir:`` / ``hf-hub:`` loaders
    accept (``model_args`` records ``time_steps`` and any architecture arguments), a model card
    ``README.md`` and ``provenance.json``; that record (source, sha256, date, spikezoo version)
    is returned. ``model_args`` are extra arguments of the architecture (e.g. a smaller model).
    """
    source, out_dir = Path(source), Path(out_dir)
    state_dict = read_checkpoint(source)
    model_args = dict(model_args or {})
    model = timm.create_model(model_name, **model_args)
    mapped = family_of(model).checkpoint_filter_fn(state_dict, model)
    try:
        model.load_state_dict(mapped, strict=True)
    except RuntimeError as error:
        problem = str(error).splitlines()[1].strip() if "\n" in str(error) else str(error)
        raise ValueError(f"{source} does not fit {full_name(model)}: {problem}") from None
    check_finite_forward(model, f"{source} converted for {full_name(model)}")
    provenance = cache.provenance(
        full_name(model), source_url or str(source.resolve()), file_sha256(source), "converted"
    )
    out_dir.mkdir(parents=True, exist_ok=True)
    save_state_dict(model.state_dict(), out_dir / "model.safetensors")
    write_config(model, out_dir / "config.json", dict(model_args, time_steps=model.time_steps))
    (out_dir / "provenance.json").write_text(json.dumps(provenance, indent=2) + "\n")
    (out_dir / "README.md").write_text(model_card(model, provenance["model"], provenance))
    return provenance


def write_config(model: nn.Module, path: Path, model_args: dict) -> None:
    """timm's ``config.json``, with a ``pretrained_cfg`` that timm's ``PretrainedCfg`` accepts.

    ``time_steps`` and the other constructor arguments go to ``model_args`` (timm passes them
    to the entry point); spikezoo's extra cfg fields (``top1``, ``authors_file``) move to a
    ``spikezoo`` block.
    """
    save_config_for_hf(model, str(path), model_args=model_args)
    config = json.loads(path.read_text())
    cfg = config["pretrained_cfg"]
    extra = {k: cfg.pop(k) for k in list(cfg) if k not in _PRETRAINED_CFG_FIELDS}
    config["spikezoo"] = extra
    path.write_text(json.dumps(config, indent=2) + "\n")
