"""Converting a checkpoint (the authors' or spikezoo's) into a timm model directory.

What the directory describes is the model actually converted. An authors' checkpoint is
described by its tag's registry entry. A checkpoint written by ``spikezoo train`` carries its
own description (the model's name and arguments, the classes and the recipe's data section),
which :func:`training_run` reads: the model is built from it, its input size, channels, mean
and std go into ``config.json`` and the model card, and a tag is attached only when the tag's
data config is the checkpoint's.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import timm
from timm.models import PretrainedCfg
from timm.models._hub import save_config_for_hf
from torch import nn

from spikezoo._optional import optional_dependency
from spikezoo.hub.model_card import model_card
from spikezoo.models import CheckpointMismatchError
from spikezoo.models._pretrained import check_finite_forward
from spikezoo.models._registry import family_of
from spikezoo.weights import (
    TRAINING_CHECKPOINT_FORMAT,
    cache,
    file_sha256,
    read_checkpoint_contents,
    save_state_dict,
    state_dict_in,
)

__all__ = [
    "TrainingRun",
    "convert_checkpoint",
    "full_name",
    "mismatch_counts",
    "training_run",
]

_PRETRAINED_CFG_FIELDS = {f.name for f in dataclasses.fields(PretrainedCfg)}

#: The fields of a pretrained cfg that say what input and output the weights expect.
_DATA_FIELDS = ("input_size", "mean", "std", "num_classes")

#: Fields of a tag's cfg that describe the paper's or the authors' weights, not weights trained
#: with spikezoo: cleared in the cfg of a converted training checkpoint.
_AUTHORS_FIELDS = dict(top1=None, authors_file=None, notes=None, license=None)


def full_name(model: nn.Module) -> str:
    """``architecture.tag`` of a model built by timm."""
    cfg = model.pretrained_cfg
    return f"{cfg['architecture']}.{cfg['tag']}" if cfg.get("tag") else cfg["architecture"]


@dataclass(frozen=True)
class TrainingRun:
    """What a checkpoint written by ``spikezoo train`` says about the model it holds.

    Attributes:
        model_name: the recipe's ``model.name``.
        model_args: the arguments it was built with (``num_classes``, ``in_chans`` and the
            recipe's ``model.kwargs``).
        data_cfg: the pretrained-cfg fields of its data: ``input_size`` ``(C, H, W)``,
            ``mean``, ``std``, ``num_classes``, ``crop_pct``, ``interpolation``.
        dataset: the recipe's ``data.dataset``.
        epochs: the epochs done when the checkpoint was written.
        top1: the top-1 accuracy (%) measured on the evaluation set at that epoch (the EMA
            weights' when there are any), ``None`` if that epoch was not evaluated.
    """

    model_name: str
    model_args: dict[str, Any]
    data_cfg: dict[str, Any]
    dataset: str
    epochs: int
    top1: float | None

    def describe(self) -> str:
        """One line: the model, its arguments and its data."""
        return f"{self.model_name} with {self.model_args}, trained on {self.dataset} " + (
            _describe_data(self.data_cfg)
        )


def training_run(contents: object) -> TrainingRun | None:
    """The description in a ``spikezoo train`` checkpoint (what
    :func:`~spikezoo.weights.read_checkpoint_contents` read); ``None`` for any other file.

    Reading the recipe's data section needs ``spikezoo.train`` (the ``train`` extra).
    """
    if not isinstance(contents, Mapping) or contents.get("format") != TRAINING_CHECKPOINT_FORMAT:
        return None
    with optional_dependency("converting a 'spikezoo train' checkpoint", extra="train"):
        from spikezoo.train.config import DataConfig
        from spikezoo.train.data import input_spec

    recipe = contents["config"]
    data = DataConfig.model_validate(recipe["data"])
    spec = input_spec(data)
    model_args = dict(num_classes=contents["num_classes"], in_chans=spec.in_chans)
    model_args.update(recipe["model"]["kwargs"])
    metrics = contents.get("metrics") or {}
    top1 = metrics.get("ema_top1", metrics.get("eval_top1"))
    data_cfg = dict(
        input_size=(model_args["in_chans"], spec.img_size, spec.img_size),
        mean=spec.mean,
        std=spec.std,
        num_classes=model_args["num_classes"],
        crop_pct=data.crop_pct,
        interpolation=data.interpolation,
    )
    return TrainingRun(
        contents["model_name"], model_args, data_cfg, data.dataset, contents["epoch"], top1
    )


def convert_checkpoint(
    source: str | Path,
    model_name: str | None,
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

    A checkpoint written by ``spikezoo train`` names its model and arguments: ``model_name``
    may then be ``None`` (or the same model, with a tag whose data config is the checkpoint's),
    and the directory describes the model as trained with spikezoo. Any other file needs
    ``model_name``; a tag is refused when the model built has another number of input channels.
    Raises ``ValueError`` naming what the checkpoint says it is when it does not fit.
    """
    source, out_dir = Path(source), Path(out_dir)
    contents = read_checkpoint_contents(source)
    state_dict = state_dict_in(contents, source)
    run = training_run(contents)
    if run is None:
        if model_name is None:
            raise ValueError(
                f"{source} is not a checkpoint written by 'spikezoo train' (those name their "
                "model), so the model must be given: --model NAME[.TAG]"
            )
        build_args, overlay = dict(model_args or {}), {}
    else:
        model_name = _name_for_run(source, run, model_name)
        build_args = {**run.model_args, **(model_args or {})}
        overlay = {**run.data_cfg, **_AUTHORS_FIELDS}
        if "." not in model_name:
            overlay.update(tag=None, hf_hub_id=None)
    model = timm.create_model(model_name, pretrained_cfg_overlay=overlay, **build_args)
    _check_channels(model, source)
    try:
        mapped = family_of(model).checkpoint_filter_fn(state_dict, model)
        model.load_state_dict(mapped, strict=True)
    except CheckpointMismatchError as error:
        if run is None:
            raise
        raise ValueError(
            f"{source} does not fit {model_name} built with {build_args} "
            f"({mismatch_counts(error)}); the checkpoint says it is {run.model_name} with "
            f"{run.model_args}"
        ) from None
    except RuntimeError as error:
        problem = str(error).splitlines()[1].strip() if "\n" in str(error) else str(error)
        raise ValueError(f"{source} does not fit {full_name(model)}: {problem}") from None
    check_finite_forward(model, f"{source} converted for {full_name(model)}")
    provenance = cache.provenance(
        full_name(model), source_url or str(source.resolve()), file_sha256(source), "converted"
    )
    out_dir.mkdir(parents=True, exist_ok=True)
    save_state_dict(model.state_dict(), out_dir / "model.safetensors")
    write_config(model, out_dir / "config.json", dict(build_args, time_steps=model.time_steps))
    (out_dir / "provenance.json").write_text(json.dumps(provenance, indent=2) + "\n")
    card = model_card(model, provenance["model"], provenance, run)
    (out_dir / "README.md").write_text(card)
    return provenance


def _name_for_run(source: Path, run: TrainingRun, model_name: str | None) -> str:
    """The name to convert a training checkpoint under: its own model, with ``model_name``'s
    tag only when the tag's data config is the checkpoint's."""
    if model_name is None:
        return run.model_name
    architecture, _, tag = model_name.partition(".")
    if architecture != run.model_name:
        raise ValueError(
            f"{source} was trained as {run.describe()}, not as {architecture}; leave out "
            f"--model, or give --model {run.model_name}"
        )
    if not tag:
        return model_name
    registered = timm.models.get_pretrained_cfg(model_name).to_dict()
    different = [
        field
        for field in _DATA_FIELDS
        if _comparable(registered.get(field)) != _comparable(run.data_cfg[field])
    ]
    if different:
        raise ValueError(
            f"{model_name} is for {_describe_data(registered)}, but {source} was trained on "
            f"{run.dataset} {_describe_data(run.data_cfg)} (they differ in "
            f"{', '.join(different)}); convert it without the tag (--model {architecture}) and "
            "load the directory with timm.create_model('local-dir:DIR', pretrained=True)"
        )
    return model_name


def _check_channels(model: nn.Module, source: Path) -> None:
    """A tag's mean and std are per input channel: refuse a model built with other channels."""
    cfg = model.pretrained_cfg
    if cfg.get("tag") and cfg["input_size"][0] != model.in_chans:
        raise ValueError(
            f"{full_name(model)} is for {_describe_data(cfg)}, but the model built has "
            f"in_chans={model.in_chans}, and {source} does not record the data it was trained "
            "on (checkpoints written by 'spikezoo train' do), so no tag describes it: load the "
            "file with timm.create_model(..., pretrained=True, "
            "pretrained_cfg_overlay=dict(file=...))"
        )


def _comparable(value: Any) -> Any:
    """Tuples and lists compare equal, floats to 4 decimals (normalisation constants)."""
    if isinstance(value, (list, tuple)):
        return tuple(round(v, 4) if isinstance(v, float) else v for v in value)
    return value


def _describe_data(cfg: Mapping[str, Any]) -> str:
    c, h, w = cfg["input_size"]
    return (
        f"({c}x{h}x{w} input, mean {tuple(cfg['mean'])}, std {tuple(cfg['std'])}, "
        f"{cfg['num_classes']} classes)"
    )


def mismatch_counts(error: CheckpointMismatchError) -> str:
    """``"3 missing, 0 unexpected, 2 mismatched tensors"``."""
    return (
        f"{len(error.missing)} missing, {len(error.unexpected)} unexpected, "
        f"{len(error.mismatched)} mismatched tensors"
    )


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
