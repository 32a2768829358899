"""Event data: synthetic streams in spikingjelly's on-disk format, via frames, into DVS models."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from spikezoo.train import DatasetError, data, load_recipe, read_training_checkpoint, train
from spikezoo.train.data import build_datasets, cifar10_dvs_split

pytest.importorskip("spikingjelly")

SMALL = [
    "model.kwargs={embed_dim: 16, depth: 1, num_heads: 2, img_size: 32}",
    "model.neuron_backend=torch",
    "data.img_size=32",
    "data.time_steps=4",
    "data.batch_size=4",
    "run.epochs=1",
    "run.progress=false",
    "run.plot=false",
    "run.tensorboard=false",
]


def _write_events(folder: Path, name: str, rng: np.random.Generator, count: int = 400) -> None:
    """One sample as spikingjelly stores it: ``.npz`` with ``t``, ``x``, ``y``, ``p``."""
    folder.mkdir(parents=True, exist_ok=True)
    np.savez(
        folder / f"{name}.npz",
        t=np.sort(rng.integers(0, 10**6, count)).astype(np.int64),
        x=rng.integers(0, 128, count).astype(np.uint16),
        y=rng.integers(0, 128, count).astype(np.uint16),
        p=rng.integers(0, 2, count).astype(np.uint8),
    )


def test_dvs128_gesture_frames_train_a_dvs_model(tmp_path):
    rng = np.random.default_rng(0)
    root = tmp_path / "gesture"
    for split, per_class in (("train", 2), ("test", 1)):
        for label in range(11):
            for i in range(per_class):
                _write_events(root / "events_np" / split / str(label), f"user{i}_{label}", rng)
    recipe = [
        "model.name=sdt_2_256_dvs128",
        "data.dataset=dvs128_gesture",
        f"data.root={root}",
        f"run.output={tmp_path / 'run'}",
        *SMALL,
    ]
    config = load_recipe(None, recipe)
    datasets = build_datasets(config.data)
    frames, label = datasets.train[0]
    assert frames.shape == (4, 2, 32, 32)  # [T, C, H, W]
    assert frames.dtype == torch.float32 and frames.sum() > 0
    assert (datasets.num_classes, datasets.in_chans, len(datasets.eval)) == (11, 2, 11)

    metrics = train(config)
    assert np.isfinite(metrics["train_loss"])
    checkpoint = read_training_checkpoint(tmp_path / "run" / "last.pth")
    assert checkpoint["num_classes"] == 11
    assert checkpoint["state_dict"]["patch_embed.proj.0.conv.weight"].shape[1] == 2


def test_cifar10_dvs_fixed_split_and_tet(tmp_path):
    rng = np.random.default_rng(1)
    root = tmp_path / "cifar10dvs"
    classes = ["airplane", "automobile", "bird", "cat", "deer"]
    classes += ["dog", "frog", "horse", "ship", "truck"]
    for name in classes:
        for i in range(10):
            _write_events(root / "events_np" / name, f"cifar10_{name}_{i}", rng)
    recipe = [
        "model.name=sdt_2_256_cifar10dvs",
        "data.dataset=cifar10_dvs",
        f"data.root={root}",
        "loss.tet=true",
        "loss.tet_lambda=0.001",
        f"run.output={tmp_path / 'run'}",
        *SMALL,
    ]
    config = load_recipe(None, recipe)
    datasets = build_datasets(config.data)
    assert (len(datasets.train), len(datasets.eval), datasets.num_classes) == (90, 10, 10)
    # per class the first 9 files by name train and the last one tests
    test_files = [datasets.eval.dataset.samples[i][0] for i in datasets.eval.indices]
    assert [Path(f).stem for f in test_files] == [f"cifar10_{n}_9" for n in classes]

    metrics = train(config)
    assert np.isfinite(metrics["train_loss"]) and 0 <= metrics["eval_top1"] <= 100


def test_split_helper_is_per_class():
    train_idx, test_idx = cifar10_dvs_split([0] * 10 + [1] * 20)
    assert test_idx == [9, 28, 29]
    assert sorted(train_idx + test_idx) == list(range(30))


def test_missing_event_folder_is_named(tmp_path):
    config = load_recipe(None, ["data.dataset=dvs128_gesture", f"data.root={tmp_path}"])
    with pytest.raises(DatasetError, match="events_np' does not exist"):
        build_datasets(config.data)


@pytest.mark.parametrize(
    ("version", "safe"),
    [
        ((3, 10, 14), False),
        ((3, 11, 7), False),
        ((3, 11, 8), True),
        ((3, 12, 1), False),
        ((3, 12, 2), True),
        ((3, 13, 0), True),
    ],
)
def test_interpreters_whose_parallel_ast_parse_can_fail(version, safe):
    assert data._thread_safe_ast(version) is safe


def _cifar10_dvs_root(tmp_path: Path) -> Path:
    rng = np.random.default_rng(2)
    root = tmp_path / "cifar10dvs"
    for name in ("airplane", "automobile"):
        for i in range(3):
            _write_events(root / "events_np" / name, f"cifar10_{name}_{i}", rng)
    return root


@pytest.mark.parametrize("safe", [False, True])
def test_event_conversion_threads_follow_the_interpreter(tmp_path, monkeypatch, safe):
    """Where concurrent ``ast.parse`` can fail, spikingjelly's conversion pool gets one thread,
    and its setting is what it was afterwards."""
    from spikingjelly import configure
    from spikingjelly.datasets import base

    monkeypatch.setattr(configure, "max_threads_number_for_datasets_preprocess", 7)
    monkeypatch.setattr(data, "_thread_safe_ast", lambda: safe)
    pools = []

    class RecordingPool(base.ThreadPoolExecutor):
        def __init__(self, max_workers):
            pools.append(max_workers)
            super().__init__(max_workers)

    monkeypatch.setattr(base, "ThreadPoolExecutor", RecordingPool)
    config = load_recipe(
        None, ["data.dataset=cifar10_dvs", f"data.root={_cifar10_dvs_root(tmp_path)}"]
    )
    assert len(build_datasets(config.data).train) == 4
    assert pools == [7 if safe else 1]
    assert configure.max_threads_number_for_datasets_preprocess == 7


def test_event_conversion_threads_are_restored_when_the_conversion_fails(tmp_path, monkeypatch):
    from spikingjelly import configure

    monkeypatch.setattr(configure, "max_threads_number_for_datasets_preprocess", 7)
    monkeypatch.setattr(data, "_thread_safe_ast", lambda: False)
    root = _cifar10_dvs_root(tmp_path)
    (root / "events_np" / "airplane" / "cifar10_airplane_0.npz").write_bytes(b"not a zip")
    config = load_recipe(None, ["data.dataset=cifar10_dvs", f"data.root={root}"])
    with pytest.raises(ValueError, match="pickled"):
        build_datasets(config.data)
    assert configure.max_threads_number_for_datasets_preprocess == 7
