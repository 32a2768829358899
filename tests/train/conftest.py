"""Small digits runs shared by the training tests (CPU, eager neurons, seconds each)."""

from __future__ import annotations

import pytest

from spikezoo.train import load_recipe, train

#: A tiny SDT: one block, 16 channels, T=1, on 8x8 digits (seconds per epoch on a CPU).
TINY = [
    "model.kwargs={embed_dim: 16, depth: 1, num_heads: 2, img_size: 8, time_steps: 1}",
    "model.kwargs.pooling_stat='0011'",
    "data.img_size=8",
    "data.subset=256",
    "data.batch_size=32",
    "run.progress=false",
    "run.plot=false",
    "run.tensorboard=false",
]


def tiny_recipe(output, *overrides: str):
    """The digits recipe shrunk to :data:`TINY`, writing into ``output``."""
    return load_recipe("digits", [*TINY, f"run.output={output}", *overrides])


def _train_digits(tmp_path_factory, *overrides: str):
    output = tmp_path_factory.mktemp("digits")
    config = load_recipe("digits", [f"run.output={output}", "run.progress=false", *overrides])
    return output, train(config)


@pytest.fixture(scope="session")
def digits_run(tmp_path_factory):
    """The committed digits recipe trained once: ``(output folder, final metrics)``."""
    return _train_digits(tmp_path_factory)


@pytest.fixture(scope="session")
def digits_backbone(tmp_path_factory):
    """The digits recipe's model trained for 2 epochs instead of 10 (about 70 % top-1): a
    trained backbone to reload and fine-tune, in a fifth of the time (``(output folder, final
    metrics)``)."""
    return _train_digits(tmp_path_factory, "run.epochs=2")
