"""Training configuration: a recipe (YAML) plus ``section.key=value`` overrides.

A recipe has the sections of :class:`Config` (``model``, ``data``, ``optim``, ``sched``,
``loss``, ``finetune``, ``run``) and an optional ``source`` string citing where its
hyper-parameters come from. Every key is checked: an unknown one raises :class:`RecipeError`
naming the closest known key.
"""

from __future__ import annotations

import contextlib
import dataclasses
import difflib
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = [
    "RECIPES_DIR",
    "Config",
    "DataConfig",
    "FinetuneConfig",
    "LossConfig",
    "ModelConfig",
    "OptimConfig",
    "RecipeError",
    "RunConfig",
    "SchedConfig",
    "apply_overrides",
    "config_from_dict",
    "config_to_dict",
    "list_recipes",
    "load_recipe",
]

#: Folder of the committed recipes (``spikezoo train <name>`` finds them by file stem).
RECIPES_DIR = Path(__file__).parent / "recipes"


class RecipeError(ValueError):
    """A recipe or override that names an unknown key or gives a value of the wrong type."""


@dataclass
class ModelConfig:
    """Which timm model to train.

    Attributes:
        name: a registered model name, e.g. ``"sdt_2_256_cifar"``.
        kwargs: keyword arguments for ``timm.create_model`` (``num_classes`` and
            ``in_chans`` come from the dataset unless given here).
        neuron_backend: backend of every spiking neuron (``"auto"``, ``"torch"``, ...).
        sync_bn: convert BatchNorm to SyncBatchNorm under DDP (needs GPUs).
        ema: keep an exponential moving average of the weights (timm ``ModelEmaV3``).
        ema_decay: the EMA decay per update.
    """

    name: str = "sdt_2_256_cifar"
    kwargs: dict[str, Any] = field(default_factory=dict)
    neuron_backend: str = "auto"
    sync_bn: bool = False
    ema: bool = False
    ema_decay: float = 0.9998


@dataclass
class DataConfig:
    """What to train on and how it is loaded.

    Attributes:
        dataset: ``"digits"`` (scikit-learn, offline), ``"cifar10"``, ``"cifar100"``,
            ``"imagefolder"`` (``root/train`` and ``root/val``), ``"dvs128_gesture"`` or
            ``"cifar10_dvs"`` (event frames ``[T, 2, H, W]`` through spikingjelly).
        root: the dataset folder (not used by ``digits``).
        download: let torchvision download CIFAR into ``root``.
        img_size: input size (digits are upsampled from 8x8 to it).
        batch_size: samples per process and step; the global batch is
            ``batch_size * world_size``.
        eval_batch_size: batch size for evaluation (default ``batch_size``).
        workers: DataLoader worker processes.
        auto_augment: timm's RandAugment string, e.g. ``"rand-m9-n1-mstd0.4-inc1"``.
        hflip: horizontal flip probability of the training transform.
        color_jitter: colour jitter strength (timm turns it off when ``auto_augment`` is set).
        scale: RandomResizedCrop area range of the training transform.
        ratio: RandomResizedCrop aspect-ratio range.
        interpolation: resize interpolation of the image transforms.
        crop_pct: evaluation centre-crop fraction.
        mean: normalisation mean (default: the model's pretrained cfg).
        std: normalisation std (default: the model's pretrained cfg).
        classes: keep only these classes, relabelled ``0..n-1`` in this order (e.g. a
            new head for fine-tuning); ``None`` keeps all.
        subset: use only the first this many samples of each split (quick smoke runs).
    """

    dataset: str = "digits"
    root: str | None = None
    download: bool = False
    img_size: int = 32
    batch_size: int = 64
    eval_batch_size: int | None = None
    workers: int = 0
    auto_augment: str | None = None
    hflip: float = 0.5
    color_jitter: float = 0.4
    scale: list[float] = field(default_factory=lambda: [0.08, 1.0])
    ratio: list[float] = field(default_factory=lambda: [3 / 4, 4 / 3])
    interpolation: str = "bicubic"
    crop_pct: float = 1.0
    mean: list[float] | None = None
    std: list[float] | None = None
    time_steps: int = 16
    classes: list[int] | None = None
    subset: int | None = None


@dataclass
class OptimConfig:
    """The optimizer, built by timm's ``create_optimizer_v2``.

    Attributes:
        opt: timm optimizer name (``"adamw"``, ``"lamb"``, ``"sgd"``, ...).
        lr: learning rate for the global batch the recipe states.
        weight_decay: decoupled weight decay (norms and biases are exempt).
        momentum: momentum of SGD-like optimizers.
        clip_grad: clip the gradient norm to this value (``None``: no clipping).
    """

    opt: str = "adamw"
    lr: float = 1e-3
    weight_decay: float = 0.05
    momentum: float = 0.9
    clip_grad: float | None = None


@dataclass
class SchedConfig:
    """The learning-rate schedule, built by timm's ``create_scheduler_v2`` (stepped per update).

    Attributes:
        sched: ``"cosine"``, ``"step"``, ``"multistep"``, ``"plateau"``, ``"none"``, ...
        warmup_epochs: linear warm-up epochs.
        warmup_lr: learning rate at the start of warm-up.
        min_lr: the floor of the cosine schedule.
        cooldown_epochs: epochs at ``min_lr`` after the schedule.
        decay_epochs: step size of ``"step"``.
        decay_rate: decay factor of ``"step"`` / ``"multistep"``.
    """

    sched: str = "cosine"
    warmup_epochs: int = 0
    warmup_lr: float = 1e-6
    min_lr: float = 1e-5
    cooldown_epochs: int = 0
    decay_epochs: float = 90
    decay_rate: float = 0.1


@dataclass
class LossConfig:
    """The loss: cross-entropy with timm's label smoothing / Mixup / CutMix, optionally TET.

    Attributes:
        smoothing: label smoothing.
        mixup: Mixup alpha (0: off).
        cutmix: CutMix alpha (0: off).
        mixup_prob: probability of applying Mixup or CutMix to a batch.
        mixup_switch_prob: probability of CutMix instead of Mixup when both are on.
        mixup_off_epoch: turn Mixup/CutMix off from this epoch on (0: never).
        tet: Temporal Efficient Training (Deng et al., ICLR 2022): the loss of every time
            step's logits ``[T, B, K]`` instead of the time average's.
        tet_lambda: weight of TET's MSE term pulling the per-step logits towards ``tet_phi``.
        tet_phi: TET's target value of the regulariser.
    """

    smoothing: float = 0.0
    mixup: float = 0.0
    cutmix: float = 0.0
    mixup_prob: float = 1.0
    mixup_switch_prob: float = 0.5
    mixup_off_epoch: int = 0
    tet: bool = False
    tet_lambda: float = 0.0
    tet_phi: float = 1.0


@dataclass
class FinetuneConfig:
    """Start from a trained checkpoint; a head of another size is replaced by a new one.

    Attributes:
        checkpoint: a checkpoint written by :func:`~spikezoo.train.train` (or any file
            ``pretrained_cfg_overlay=dict(file=...)`` accepts); ``None``: train from scratch.
        num_classes: classes of the checkpoint's head (default: read from the checkpoint).
    """

    checkpoint: str | None = None
    num_classes: int | None = None


@dataclass
class RunConfig:
    """Epochs, seed, device, output and bookkeeping.

    Attributes:
        epochs: training epochs (warm-up included, cool-down added).
        stop_after: stop once this many epochs are done (the schedule still spans
            ``epochs``; resume later with ``run.resume=auto``), e.g. for jobs with a time limit.
        seed: the seed of the weights, the sampler order and the augmentations.
        output: folder of ``last.pth``, ``best.pth``, ``log.csv``, ``curves.png``.
        resume: a checkpoint to continue from, or ``"auto"`` for ``<output>/last.pth``.
        device: ``"auto"`` (CUDA when available), ``"cpu"`` or ``"cuda"``.
        amp: automatic mixed precision (float16 on CUDA, bfloat16 on CPU).
        deterministic: ask torch for deterministic algorithms.
        progress: show a progress bar per epoch (rank 0).
        tensorboard: write TensorBoard events when ``tensorboard`` is installed.
        plot: plot the curves to ``curves.png`` at the end (when matplotlib is installed).
        eval_every: validate every this many epochs (and after the last).
    """

    epochs: int = 10
    stop_after: int | None = None
    seed: int = 0
    output: str = "runs/train"
    resume: str | None = None
    device: str = "auto"
    amp: bool = False
    deterministic: bool = False
    progress: bool = True
    tensorboard: bool = True
    plot: bool = True
    eval_every: int = 1


@dataclass
class Config:
    """A whole training recipe: one dataclass per section, plus where its values come from.

    Attributes:
        source: where the hyper-parameters come from (paper, authors' config).
    """

    source: str = ""
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    sched: SchedConfig = field(default_factory=SchedConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)
    run: RunConfig = field(default_factory=RunConfig)


def _known_keys(config: Any, prefix: str = "") -> list[str]:
    keys = []
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        if dataclasses.is_dataclass(value):
            keys += _known_keys(value, f"{prefix}{f.name}.")
        else:
            keys.append(f"{prefix}{f.name}")
    return keys


def _unknown(key: str, known: Iterable[str]) -> RecipeError:
    known = list(known)
    close = difflib.get_close_matches(key, known, n=1, cutoff=0.5)
    if not close:
        close = difflib.get_close_matches(key.rsplit(".", 1)[-1], known, n=1, cutoff=0.5)
    hint = f"did you mean '{close[0]}'?" if close else f"known keys: {', '.join(known)}"
    return RecipeError(f"unknown recipe key '{key}' ({hint})")


def _check_type(key: str, value: Any, annotation: str) -> Any:
    """``value`` if it fits the field (ints pass as floats); a RecipeError otherwise."""
    if value is None:
        if "None" in annotation:
            return None
        raise RecipeError(f"recipe key '{key}' expects {annotation}, got null")
    if annotation.startswith("float") and isinstance(value, str):
        with contextlib.suppress(ValueError):
            value = float(value)  # YAML 1.1 reads "1e-3" (no dot) as a string
    expected = {"int": int, "float": (int, float), "bool": bool, "str": str}
    for name in ("bool", "int", "float", "str"):
        if annotation.startswith(name) and name in expected:
            ok = isinstance(value, expected[name]) and not (
                name != "bool" and isinstance(value, bool)
            )
            if not ok:
                raise RecipeError(
                    f"recipe key '{key}' expects {annotation}, got {value!r} "
                    f"({type(value).__name__})"
                )
            return float(value) if name == "float" else value
    if annotation.startswith("list") and not isinstance(value, list):
        raise RecipeError(f"recipe key '{key}' expects a list, got {value!r}")
    if annotation.startswith("dict") and not isinstance(value, Mapping):
        raise RecipeError(f"recipe key '{key}' expects a mapping, got {value!r}")
    return dict(value) if isinstance(value, Mapping) else value


def _set(config: Config, key: str, value: Any) -> None:
    """Set the dotted ``key`` (``"optim.lr"``; ``"model.kwargs.depth"`` reaches into kwargs)."""
    parts = key.split(".")
    target: Any = config
    for i, part in enumerate(parts):
        if isinstance(target, dict):
            rest = ".".join(parts[i:])
            target[rest] = value
            return
        names = {f.name: f for f in dataclasses.fields(target)}
        if part not in names:
            raise _unknown(key, _known_keys(config))
        current = getattr(target, part)
        if i == len(parts) - 1:
            if dataclasses.is_dataclass(current):
                if not isinstance(value, Mapping):
                    raise RecipeError(f"recipe section '{key}' expects a mapping, got {value!r}")
                for sub, sub_value in value.items():
                    _set(config, f"{key}.{sub}", sub_value)
                return
            annotation = str(names[part].type)
            setattr(target, part, _check_type(key, value, annotation))
            return
        target = current
    raise RecipeError(f"recipe key '{key}' names a section, not a value")  # pragma: no cover


def config_from_dict(recipe: Mapping[str, Any]) -> Config:
    """A :class:`Config` from a nested mapping (a parsed recipe); unknown keys raise."""
    if not isinstance(recipe, Mapping):
        raise RecipeError(f"a recipe is a mapping of sections, got {type(recipe).__name__}")
    config = Config()
    for key, value in recipe.items():
        _set(config, str(key), value)
    return config


def config_to_dict(config: Config) -> dict[str, Any]:
    """The recipe as plain nested dicts (what checkpoints and ``config.yaml`` store)."""
    return dataclasses.asdict(config)


def _parse_value(text: str) -> Any:
    import yaml

    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def apply_overrides(config: Config, overrides: Iterable[str]) -> Config:
    """Apply ``section.key=value`` overrides; values parse as YAML (``1e-3``, ``[1, 2]``)."""
    for override in overrides:
        key, sep, text = override.partition("=")
        if not sep or not key.strip():
            raise RecipeError(f"an override is 'section.key=value', got {override!r}")
        _set(config, key.strip(), _parse_value(text))
    return config


def list_recipes() -> list[str]:
    """Names of the committed recipes (file stems in :data:`RECIPES_DIR`)."""
    return sorted(p.stem for p in RECIPES_DIR.glob("*.yaml"))


def load_recipe(recipe: str | os.PathLike | None = None, overrides: Iterable[str] = ()) -> Config:
    """Read a recipe (a YAML path or a committed recipe's name) and apply ``overrides``.

    ``None`` starts from the defaults of :class:`Config` (digits).
    """
    import yaml

    config = Config()
    if recipe is not None:
        path = Path(recipe)
        if not path.suffix and not path.exists():
            path = RECIPES_DIR / f"{recipe}.yaml"
            if not path.exists():
                close = difflib.get_close_matches(str(recipe), list_recipes(), n=1)
                hint = f"did you mean '{close[0]}'?" if close else "give a path to a .yaml file"
                raise RecipeError(f"no recipe named '{recipe}' ({hint})")
        if not path.is_file():
            raise RecipeError(f"recipe file '{path}' does not exist")
        try:
            parsed = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as error:
            raise RecipeError(f"recipe '{path}' is not valid YAML: {error}") from error
        config = config_from_dict(parsed)
    return apply_overrides(config, overrides)
