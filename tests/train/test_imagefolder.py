"""An ImageFolder through timm's transforms (RandAugment) into an SDT, and option checks."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from spikezoo.train import RecipeError, load_recipe, train
from spikezoo.train.data import build_datasets


def test_imagefolder_with_randaugment_trains(tmp_path):
    rng = np.random.default_rng(0)
    for split, count in (("train", 8), ("val", 2)):
        for label in ("cat", "dog"):
            folder = tmp_path / "images" / split / label
            folder.mkdir(parents=True)
            for i in range(count):
                pixels = rng.integers(0, 256, (20, 24, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(folder / f"{i}.png")
    recipe = [
        "data.dataset=imagefolder",
        f"data.root={tmp_path / 'images'}",
        "data.img_size=16",
        "data.batch_size=4",
        "data.auto_augment=rand-m9-n1-mstd0.4-inc1",
        "model.kwargs={embed_dim: 16, depth: 1, num_heads: 2, img_size: 16, time_steps: 1}",
        "model.neuron_backend=torch",
        "optim.clip_grad=1.0",
        "run.epochs=1",
        "run.progress=false",
        "run.plot=false",
        "run.tensorboard=false",
        f"run.output={tmp_path / 'run'}",
    ]
    config = load_recipe(None, recipe)
    datasets = build_datasets(config.data)
    image, label = datasets.train[0]
    assert tuple(image.shape) == (3, 16, 16)
    assert (datasets.num_classes, len(datasets.eval)) == (2, 4)
    metrics = train(config)
    assert np.isfinite(metrics["train_loss"])


def test_sync_bn_on_the_cpu_is_refused(tmp_path):
    config = load_recipe(
        "digits", ["model.sync_bn=true", "run.device=cpu", f"run.output={tmp_path}"]
    )
    with pytest.raises(RecipeError, match="sync_bn=true needs CUDA"):
        train(config)
    assert not list(tmp_path.iterdir())
