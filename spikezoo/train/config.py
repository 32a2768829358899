"""Training configuration: a recipe (YAML) plus ``section.key=value`` overrides.

A recipe has the sections of :class:`Config` (``model``, ``data``, ``optim``, ``sched``,
``loss``, ``finetune``, ``run``) and an optional ``source`` string citing where its
hyper-parameters come from. Each section is a pydantic model in strict mode: every value is
checked against its field's type and range (an int passes as a float, nothing else is
coerced), and an unknown key raises :class:`RecipeError` naming the closest known key.
"""

from __future__ import annotations

import contextlib
import difflib
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Annotated, Any, Union, get_args, get_origin

from spikezoo._optional import optional_dependency

with optional_dependency("spikezoo.train (training recipes)"):
    from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError
    from pydantic.fields import FieldInfo

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


def _number_from_text(value: Any) -> Any:
    """A string that reads as a number, as a float: YAML 1.1 reads ``1e-3`` (no dot) as text."""
    if isinstance(value, str):
        with contextlib.suppress(ValueError):
            return float(value)
    return value


#: A float field's type: ints and numeric strings pass (as floats), bools do not.
Float = Annotated[float, BeforeValidator(_number_from_text)]


class _Section(BaseModel):
    """A recipe section: strict types, no unknown keys, assignments checked too."""

    model_config = ConfigDict(strict=True, extra="forbid", validate_assignment=True)


class ModelConfig(_Section):
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
    kwargs: dict[str, Any] = Field(default_factory=dict)
    neuron_backend: str = "auto"
    sync_bn: bool = False
    ema: bool = False
    ema_decay: Float = Field(0.9998, ge=0, le=1)


class DataConfig(_Section):
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
        time_steps: frames per sample of the event datasets (``[T, 2, H, W]``).
        classes: keep only these classes, relabelled ``0..n-1`` in this order (e.g. a
            new head for fine-tuning); ``None`` keeps all.
        subset: use only the first this many samples of each split (quick smoke runs).
    """

    dataset: str = "digits"
    root: str | None = None
    download: bool = False
    img_size: int = Field(32, ge=1)
    batch_size: int = Field(64, ge=1)
    eval_batch_size: int | None = Field(None, ge=1)
    workers: int = Field(0, ge=0)
    auto_augment: str | None = None
    hflip: Float = Field(0.5, ge=0, le=1)
    color_jitter: Float = Field(0.4, ge=0)
    scale: list[Float] = Field(default_factory=lambda: [0.08, 1.0], min_length=2, max_length=2)
    ratio: list[Float] = Field(default_factory=lambda: [3 / 4, 4 / 3], min_length=2, max_length=2)
    interpolation: str = "bicubic"
    crop_pct: Float = Field(1.0, gt=0, le=1)
    mean: list[Float] | None = None
    std: list[Float] | None = None
    time_steps: int = Field(16, ge=1)
    classes: list[int] | None = None
    subset: int | None = Field(None, ge=1)


class OptimConfig(_Section):
    """The optimizer, built by timm's ``create_optimizer_v2``.

    Attributes:
        opt: timm optimizer name (``"adamw"``, ``"lamb"``, ``"sgd"``, ...).
        lr: learning rate for the global batch the recipe states.
        weight_decay: decoupled weight decay (norms and biases are exempt).
        momentum: momentum of SGD-like optimizers.
        clip_grad: clip the gradient norm to this value (``None``: no clipping).
    """

    opt: str = "adamw"
    lr: Float = Field(1e-3, ge=0)
    weight_decay: Float = Field(0.05, ge=0)
    momentum: Float = Field(0.9, ge=0)
    clip_grad: Float | None = Field(None, gt=0)


class SchedConfig(_Section):
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
    warmup_epochs: int = Field(0, ge=0)
    warmup_lr: Float = Field(1e-6, ge=0)
    min_lr: Float = Field(1e-5, ge=0)
    cooldown_epochs: int = Field(0, ge=0)
    decay_epochs: Float = Field(90.0, gt=0)
    decay_rate: Float = Field(0.1, ge=0)


class LossConfig(_Section):
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

    smoothing: Float = Field(0.0, ge=0, lt=1)
    mixup: Float = Field(0.0, ge=0)
    cutmix: Float = Field(0.0, ge=0)
    mixup_prob: Float = Field(1.0, ge=0, le=1)
    mixup_switch_prob: Float = Field(0.5, ge=0, le=1)
    mixup_off_epoch: int = Field(0, ge=0)
    tet: bool = False
    tet_lambda: Float = Field(0.0, ge=0, le=1)
    tet_phi: Float = 1.0


class FinetuneConfig(_Section):
    """Start from a trained checkpoint; a head of another size is replaced by a new one.

    Attributes:
        checkpoint: a checkpoint written by :func:`~spikezoo.train.train` (or any file
            ``pretrained_cfg_overlay=dict(file=...)`` accepts); ``None``: train from scratch.
        num_classes: classes of the checkpoint's head (default: read from the checkpoint).
    """

    checkpoint: str | None = None
    num_classes: int | None = Field(None, ge=1)


class RunConfig(_Section):
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
        progress: show a progress bar per epoch (rank 0); the one-line summary of each epoch
            is printed either way.
        tensorboard: write TensorBoard events when ``tensorboard`` is installed.
        plot: plot the curves to ``curves.png`` at the end (when matplotlib is installed).
        eval_every: validate every this many epochs (and after the last).
    """

    epochs: int = Field(10, ge=1)
    stop_after: int | None = Field(None, ge=1)
    seed: int = 0
    output: str = "runs/train"
    resume: str | None = None
    device: str = "auto"
    amp: bool = False
    deterministic: bool = False
    progress: bool = True
    tensorboard: bool = True
    plot: bool = True
    eval_every: int = Field(1, ge=1)


class Config(_Section):
    """A whole training recipe: one model per section, plus where its values come from.

    Attributes:
        source: where the hyper-parameters come from (paper, authors' config).
    """

    source: str = ""
    model: ModelConfig = Field(default_factory=ModelConfig)
    data: DataConfig = Field(default_factory=DataConfig)
    optim: OptimConfig = Field(default_factory=OptimConfig)
    sched: SchedConfig = Field(default_factory=SchedConfig)
    loss: LossConfig = Field(default_factory=LossConfig)
    finetune: FinetuneConfig = Field(default_factory=FinetuneConfig)
    run: RunConfig = Field(default_factory=RunConfig)


def _is_section(annotation: Any) -> bool:
    return isinstance(annotation, type) and issubclass(annotation, _Section)


def _known_keys(section: type[_Section] = Config, prefix: str = "") -> list[str]:
    keys = []
    for name, field in section.model_fields.items():
        if _is_section(field.annotation):
            keys += _known_keys(field.annotation, f"{prefix}{name}.")
        else:
            keys.append(f"{prefix}{name}")
    return keys


def _unknown(key: str) -> RecipeError:
    known = _known_keys()
    close = difflib.get_close_matches(key, known, n=1, cutoff=0.5)
    if not close:
        close = difflib.get_close_matches(key.rsplit(".", 1)[-1], known, n=1, cutoff=0.5)
    hint = f"did you mean '{close[0]}'?" if close else f"known keys: {', '.join(known)}"
    return RecipeError(f"unknown recipe key '{key}' ({hint})")


def _type_name(annotation: Any) -> str:
    """``list[Float]`` as ``a list of float``, for error messages."""
    origin, args = get_origin(annotation), get_args(annotation)
    if origin is Annotated:
        return _type_name(args[0])
    if origin is list:
        return f"a list of {_type_name(args[0])}"
    if origin is dict:
        return "a mapping"
    return annotation.__name__


def _bounds(field: FieldInfo) -> str:
    """The range and length constraints of ``field``: ``" >= 1"``, ``" in [0, 1)"``."""
    found = {
        name: getattr(constraint, name)
        for constraint in field.metadata
        for name in ("ge", "gt", "le", "lt", "min_length", "max_length")
        if hasattr(constraint, name)
    }
    text = ""
    if "min_length" in found:
        text += f" of length {found['min_length']}"
    low = ("[", ">=", found["ge"]) if "ge" in found else ("(", ">", found.get("gt"))
    high = ("]", "<=", found["le"]) if "le" in found else (")", "<", found.get("lt"))
    if low[2] is not None and high[2] is not None:
        return f"{text} in {low[0]}{low[2]}, {high[2]}{high[0]}"
    for _, relation, value in (low, high):
        if value is not None:
            text += f" {relation} {value}"
    return text


def _expected(field: FieldInfo) -> str:
    """What ``field`` accepts, e.g. ``int >= 1 or null``."""
    annotation = field.annotation
    members = get_args(annotation) if get_origin(annotation) in (Union, type(int | None)) else ()
    kinds = [member for member in members if member is not type(None)] or [annotation]
    nullable = len(kinds) < len(members)
    text = " or ".join(_type_name(kind) for kind in kinds) + _bounds(field)
    return f"{text} or null" if nullable else text


def _wrong_value(key: str, field: FieldInfo, value: Any) -> RecipeError:
    return RecipeError(
        f"recipe key '{key}' expects {_expected(field)}, got {value!r} ({type(value).__name__})"
    )


def _assign(recipe: dict[str, Any], key: str, value: Any) -> None:
    """Put ``value`` at the dotted ``key`` of the nested ``recipe``.

    A mapping given to a section (``optim={lr: 1}``) merges into it, key by key; one given
    to a mapping value (``model.kwargs={depth: 2}``) replaces it; a dotted key below a
    mapping value (``model.kwargs.depth=2``) sets one entry of it.
    """
    parts = key.split(".")
    section, target = Config, recipe
    for depth, part in enumerate(parts):
        field = section.model_fields.get(part)
        if field is None:
            raise _unknown(key)
        if _is_section(field.annotation):
            section, target = field.annotation, target.setdefault(part, {})
            continue
        name, rest = ".".join(parts[: depth + 1]), ".".join(parts[depth + 1 :])
        if not rest:
            target[part] = value
        elif get_origin(field.annotation) is dict:
            entries = target.get(part)
            if not isinstance(entries, Mapping):
                raise _wrong_value(name, field, entries)
            target[part] = {**entries, rest: value}
        else:
            raise RecipeError(f"recipe key '{name}' holds a value, not entries (got '{key}')")
        return
    if not isinstance(value, Mapping):
        raise RecipeError(f"recipe section '{key}' expects a mapping, got {value!r}")
    for sub_key, sub_value in value.items():
        _assign(recipe, f"{key}.{sub_key}", sub_value)


def _validated(recipe: dict[str, Any]) -> Config:
    """``recipe`` as a :class:`Config`; its first wrong value as a :class:`RecipeError`."""
    try:
        return Config.model_validate(recipe)
    except ValidationError as error:
        # the location runs through sections to a field (then, for a list, to an item)
        location = error.errors()[0]["loc"]
    section, target, depth = Config, recipe, 0
    while _is_section(section.model_fields[location[depth]].annotation):
        section, target = section.model_fields[location[depth]].annotation, target[location[depth]]
        depth += 1
    name = location[depth]
    key = ".".join(str(part) for part in location[: depth + 1])
    raise _wrong_value(key, section.model_fields[name], target[name])


def config_from_dict(recipe: Mapping[str, Any]) -> Config:
    """A :class:`Config` from a nested mapping (a parsed recipe); unknown keys raise."""
    if not isinstance(recipe, Mapping):
        raise RecipeError(f"a recipe is a mapping of sections, got {type(recipe).__name__}")
    fields: dict[str, Any] = {}
    for key, value in recipe.items():
        _assign(fields, str(key), value)
    return _validated(fields)


def config_to_dict(config: Config) -> dict[str, Any]:
    """The recipe as plain nested dicts (what checkpoints and ``config.yaml`` store)."""
    return config.model_dump()


def _parse_value(text: str) -> Any:
    with optional_dependency("reading recipe overrides"):
        import yaml

    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def apply_overrides(config: Config, overrides: Iterable[str]) -> Config:
    """``config`` with ``section.key=value`` overrides; values parse as YAML (``1e-3``, ``[1, 2]``).

    Returns a new :class:`Config`; ``config`` is left as it was.
    """
    fields = config_to_dict(config)
    for override in overrides:
        key, sep, text = override.partition("=")
        if not sep or not key.strip():
            raise RecipeError(f"an override is 'section.key=value', got {override!r}")
        _assign(fields, key.strip(), _parse_value(text))
    return _validated(fields)


def list_recipes() -> list[str]:
    """Names of the committed recipes (file stems in :data:`RECIPES_DIR`)."""
    return sorted(p.stem for p in RECIPES_DIR.glob("*.yaml"))


def load_recipe(recipe: str | os.PathLike | None = None, overrides: Iterable[str] = ()) -> Config:
    """Read a recipe (a YAML path or a committed recipe's name) and apply ``overrides``.

    ``None`` starts from the defaults of :class:`Config` (digits).
    """
    with optional_dependency("reading a recipe"):
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
