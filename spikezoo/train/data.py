"""Datasets and loaders: scikit-learn digits (offline), torchvision CIFAR and ImageFolder,
and event data (DVS128 Gesture, CIFAR10-DVS) integrated to frames by spikingjelly.

Every loader shards with :class:`~torch.utils.data.DistributedSampler` (one process is a
world of one), so the sample order depends only on the seed and the epoch and a resumed run
sees the same batches as an uninterrupted one.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler, TensorDataset

from spikezoo._optional import optional_dependency
from spikezoo.train.config import DataConfig
from spikezoo.train.distributed import DistributedContext

__all__ = [
    "CIFAR10_DVS_TRAIN_FRACTION",
    "DATASETS",
    "DIGITS_TEST_SIZE",
    "DatasetError",
    "Datasets",
    "InputSpec",
    "build_datasets",
    "build_loaders",
    "cifar10_dvs_split",
    "input_spec",
    "load_digits_split",
]

#: Names ``data.dataset`` accepts.
DATASETS = ("digits", "cifar10", "cifar100", "imagefolder", "dvs128_gesture", "cifar10_dvs")

#: Fraction of each CIFAR10-DVS class used for training (the first files by name).
CIFAR10_DVS_TRAIN_FRACTION = 0.9

#: Test samples of the fixed digits split (stratified, ``random_state=0``).
DIGITS_TEST_SIZE = 360

_NORMALISATION = {
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "cifar100": ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
    "imagefolder": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
}


#: The digits' pixels (0..16) scaled to [0, 1], then normalised to [-1, 1].
_DIGITS_NORMALISATION = ((0.5,), (0.5,))
#: Event frames are counts of events per pixel, not normalised.
_EVENT_NORMALISATION = ((0.0, 0.0), (1.0, 1.0))


class DatasetError(ValueError):
    """A dataset that is unknown or not where the recipe says."""


@dataclass(frozen=True)
class InputSpec:
    """What a model trained on a dataset takes: ``[in_chans, img_size, img_size]`` images
    (per time step, for event frames) normalised per channel with ``mean`` and ``std``."""

    in_chans: int
    img_size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]


def input_spec(config: DataConfig) -> InputSpec:
    """The input the loaders of ``config`` produce (``data.mean`` / ``data.std`` apply to the
    image datasets; digits and event frames have fixed scalings)."""
    if config.dataset not in DATASETS:
        raise DatasetError(
            f"data.dataset must be one of {', '.join(DATASETS)}, got {config.dataset!r}"
        )
    if config.dataset == "digits":
        return InputSpec(1, config.img_size, *_DIGITS_NORMALISATION)
    if config.dataset in ("dvs128_gesture", "cifar10_dvs"):
        return InputSpec(2, config.img_size, *_EVENT_NORMALISATION)
    mean, std = _NORMALISATION[config.dataset]
    return InputSpec(3, config.img_size, tuple(config.mean or mean), tuple(config.std or std))


@dataclass
class Datasets:
    """The training and evaluation sets and what the model must fit.

    Attributes:
        train: the training set (``(image [C, H, W], label)`` samples).
        eval: the evaluation set.
        num_classes: number of classes.
        in_chans: input channels.
    """

    train: Dataset
    eval: Dataset
    num_classes: int
    in_chans: int


def load_digits_split(img_size: int) -> tuple[TensorDataset, TensorDataset]:
    """scikit-learn's 8x8 digits, upsampled (bilinear) to ``img_size`` and scaled to ``[-1, 1]``.

    A fixed stratified split: 1437 training and :data:`DIGITS_TEST_SIZE` test images.
    """
    with optional_dependency("the digits data set"):
        from sklearn.datasets import load_digits
        from sklearn.model_selection import train_test_split

    digits = load_digits()
    images = torch.tensor(digits.images, dtype=torch.float32).unsqueeze(1) / 16
    images = torch.nn.functional.interpolate(
        images, size=(img_size, img_size), mode="bilinear", align_corners=False
    )
    (mean,), (std,) = _DIGITS_NORMALISATION
    images = (images - mean) / std
    labels = torch.tensor(digits.target, dtype=torch.long)
    train_idx, test_idx = train_test_split(
        range(len(labels)), test_size=DIGITS_TEST_SIZE, stratify=digits.target, random_state=0
    )
    train_idx, test_idx = torch.tensor(train_idx), torch.tensor(test_idx)
    return (
        TensorDataset(images[train_idx], labels[train_idx]),
        TensorDataset(images[test_idx], labels[test_idx]),
    )


def _transforms(config: DataConfig) -> tuple:
    from timm.data import create_transform

    spec = input_spec(config)
    common = dict(
        input_size=config.img_size,
        interpolation=config.interpolation,
        mean=spec.mean,
        std=spec.std,
        crop_pct=config.crop_pct,
    )
    train = create_transform(
        is_training=True,
        auto_augment=config.auto_augment,
        hflip=config.hflip,
        color_jitter=config.color_jitter,
        scale=tuple(config.scale),
        ratio=tuple(config.ratio),
        **common,
    )
    return train, create_transform(is_training=False, **common)


class _Frames:
    """spikingjelly's frames ``[T, 2, 128, 128]`` (NumPy) as a float tensor resized to ``size``."""

    def __init__(self, size: int) -> None:
        self.size = size

    def __call__(self, frames) -> torch.Tensor:
        frames = torch.as_tensor(frames, dtype=torch.float32)
        if frames.shape[-1] != self.size or frames.shape[-2] != self.size:
            frames = torch.nn.functional.interpolate(
                frames, size=(self.size, self.size), mode="bilinear", antialias=True
            )
        return frames


def cifar10_dvs_split(targets: list[int], fraction: float = CIFAR10_DVS_TRAIN_FRACTION):
    """CIFAR10-DVS has no official split: per class, the first ``fraction`` of the samples in
    spikingjelly's order (files sorted by name) train, the rest test. ``(train, test)`` indices.
    """
    train, test = [], []
    for label in sorted(set(targets)):
        members = [i for i, t in enumerate(targets) if t == label]
        cut = int(len(members) * fraction)
        train += members[:cut]
        test += members[cut:]
    return train, test


def _thread_safe_ast(version: tuple[int, int, int] = sys.version_info[:3]) -> bool:
    """Whether concurrent ``ast.parse`` calls are safe on this interpreter.

    Before CPython 3.11.8 and 3.12.2, the AST constructor kept its recursion counter in state
    shared by all threads, and a thread switch inside it (a garbage collection running a
    finaliser) raised ``SystemError: AST constructor recursion depth mismatch`` in another
    thread's parse (python/cpython#106905, fixed by python/cpython#113035). ``numpy.load`` parses
    every ``.npy`` header with ``ast.literal_eval``. 3.10 counts as unsafe too: the counter's
    history there was not checked, and the cost of caution is only a slower first conversion.
    """
    if version[:2] == (3, 12):
        return version >= (3, 12, 2)
    return version >= (3, 11, 8)


@contextlib.contextmanager
def _event_conversion_threads() -> Iterator[None]:
    """spikingjelly converts event files to frames on a pool of threads, each loading ``.npz``
    files; on an interpreter where that can fail at random (:func:`_thread_safe_ast`) the pool
    gets one thread for the conversion, and spikingjelly's setting is restored afterwards."""
    if _thread_safe_ast():
        yield
        return
    from spikingjelly import configure

    threads = configure.max_threads_number_for_datasets_preprocess
    configure.max_threads_number_for_datasets_preprocess = 1
    try:
        yield
    finally:
        configure.max_threads_number_for_datasets_preprocess = threads


def _event_datasets(config: DataConfig, root: Path) -> Datasets:
    """Frames ``[T, 2, H, W]`` (``T = data.time_steps``, split by event count) from
    spikingjelly's on-disk ``events_np`` folder of ``.npz`` files (``t``, ``x``, ``y``, ``p``).
    """
    if not (root / "events_np").is_dir() and not (root / "download").is_dir():
        raise DatasetError(
            f"dataset path '{root / 'events_np'}' does not exist (expected spikingjelly's "
            "events_np/ folder, or the original files in download/)"
        )
    frames = dict(
        data_type="frame",
        frames_number=config.time_steps,
        split_by="number",
        transform=_Frames(config.img_size),
    )
    if config.dataset == "dvs128_gesture":
        with optional_dependency("the DVS128 Gesture data set"):
            from spikingjelly.datasets.dvs128_gesture import DVS128Gesture

        with _event_conversion_threads():
            train = DVS128Gesture(str(root), train=True, **frames)
            test = DVS128Gesture(str(root), train=False, **frames)
        return _finish(train, test, config, len(train.classes))
    with optional_dependency("the CIFAR10-DVS data set"):
        from spikingjelly.datasets.cifar10_dvs import CIFAR10DVS

    with _event_conversion_threads():
        everything = CIFAR10DVS(str(root), **frames)
    train_idx, test_idx = cifar10_dvs_split(everything.targets)
    identity = {c: c for c in range(len(everything.classes))}
    train = _Selection(everything, train_idx, identity)
    test = _Selection(everything, test_idx, identity)
    train.targets = [everything.targets[i] for i in train_idx]
    test.targets = [everything.targets[i] for i in test_idx]
    return _finish(train, test, config, len(everything.classes))


def _require_folder(path: Path, what: str) -> None:
    if not path.is_dir():
        raise DatasetError(f"dataset path '{path}' does not exist (expected {what})")


def build_datasets(config: DataConfig) -> Datasets:
    """The datasets ``config`` names (``classes`` and ``subset`` applied).

    A missing folder raises :class:`DatasetError`.
    """
    input_spec(config)  # an unknown data set fails here
    if config.dataset == "digits":
        train, test = load_digits_split(config.img_size)
        return _finish(train, test, config, 10)
    if config.root is None:
        raise DatasetError(f"data.root is required for data.dataset={config.dataset!r}")
    root = Path(config.root).expanduser()
    if config.dataset in ("dvs128_gesture", "cifar10_dvs"):
        return _event_datasets(config, root)
    train_transform, eval_transform = _transforms(config)
    from torchvision import datasets

    if config.dataset == "imagefolder":
        for split in ("train", "val"):
            _require_folder(root / split, f"an ImageFolder with '{split}/<class>/<image>'")
        train = datasets.ImageFolder(root / "train", transform=train_transform)
        test = datasets.ImageFolder(root / "val", transform=eval_transform)
        return _finish(train, test, config, len(train.classes))
    cifar = datasets.CIFAR10 if config.dataset == "cifar10" else datasets.CIFAR100
    if not config.download:
        _require_folder(root, f"the {cifar.__name__} python batches, or data.download=true")
    try:
        train = cifar(root, train=True, transform=train_transform, download=config.download)
        test = cifar(root, train=False, transform=eval_transform, download=config.download)
    except RuntimeError as error:
        raise DatasetError(f"{cifar.__name__} in '{root}': {error}") from error
    return Datasets(train, test, len(train.classes), input_spec(config).in_chans)


class _Selection(Dataset):
    """``dataset[indices[i]]`` with its label mapped through ``relabel``."""

    def __init__(self, dataset: Dataset, indices: list[int], relabel: dict[int, int]) -> None:
        self.dataset, self.indices, self.relabel = dataset, indices, relabel

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, index: int):
        image, label = self.dataset[self.indices[index]]
        return image, self.relabel[int(label)]


def _labels(dataset: Dataset) -> list[int]:
    if isinstance(dataset, TensorDataset):
        return dataset.tensors[1].tolist()
    return list(dataset.targets)


def _select(dataset: Dataset, config: DataConfig, num_classes: int) -> Dataset:
    """The samples of ``config.classes`` (relabelled), the first ``config.subset`` of them."""
    labels = _labels(dataset)
    classes = list(range(num_classes)) if config.classes is None else config.classes
    unknown = sorted(set(classes) - set(range(num_classes)))
    if unknown or len(set(classes)) != len(classes):
        raise DatasetError(
            f"data.classes must be distinct labels in 0..{num_classes - 1}, got {config.classes}"
        )
    relabel = {label: new for new, label in enumerate(classes)}
    indices = [i for i, label in enumerate(labels) if label in relabel]
    return _Selection(dataset, indices[: config.subset], relabel)


def _finish(train: Dataset, test: Dataset, config: DataConfig, classes: int) -> Datasets:
    chans = input_spec(config).in_chans
    if config.classes is None and config.subset is None:
        return Datasets(train, test, classes, chans)
    train, test = _select(train, config, classes), _select(test, config, classes)
    return Datasets(train, test, len(config.classes or range(classes)), chans)


class _Shard(torch.utils.data.Sampler[int]):
    """Every ``world_size``-th index from ``rank``: each sample evaluated exactly once."""

    def __init__(self, length: int, context: DistributedContext) -> None:
        self.indices = range(context.rank, length, context.world_size)

    def __iter__(self):
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)


def build_loaders(
    datasets: Datasets, config: DataConfig, context: DistributedContext, seed: int
) -> tuple[DataLoader, DataLoader, DistributedSampler]:
    """Training and evaluation loaders, and the training sampler (call its ``set_epoch``).

    Training drops the last incomplete batch, so ``N`` processes with ``batch_size`` each see
    the same samples per step as one process with ``N * batch_size``. A training set smaller
    than one global batch raises :class:`DatasetError` (no step could run).
    """
    samples, global_batch = len(datasets.train), config.batch_size * context.world_size
    if samples < global_batch:
        processes = f" x {context.world_size} processes" if context.world_size > 1 else ""
        raise DatasetError(
            f"the training set has {samples} samples, fewer than one batch "
            f"(data.batch_size={config.batch_size}{processes}), and the incomplete batch is "
            "dropped, so no step would run: lower data.batch_size or raise data.subset"
        )
    sampler = DistributedSampler(
        datasets.train,
        num_replicas=context.world_size,
        rank=context.rank,
        shuffle=True,
        seed=seed,
        drop_last=True,
    )
    pin = context.device.type == "cuda"
    train = DataLoader(
        datasets.train,
        batch_size=config.batch_size,
        sampler=sampler,
        num_workers=config.workers,
        pin_memory=pin,
        drop_last=True,
        persistent_workers=config.workers > 0,
    )
    evaluation = DataLoader(
        datasets.eval,
        batch_size=config.eval_batch_size or config.batch_size,
        sampler=_Shard(len(datasets.eval), context),
        num_workers=config.workers,
        pin_memory=pin,
    )
    return train, evaluation, sampler
