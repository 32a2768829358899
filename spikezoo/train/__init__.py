"""Training and evaluation of spikezoo's models: recipes, DDP through torchrun, checkpoints.

``train(load_recipe("sdt_cifar10", ["optim.lr=1e-3"]))`` trains; ``spikezoo train`` and
``torchrun --nproc_per_node=N -m spikezoo.train`` are the command lines. See
``docs/training.md``.
"""

from spikezoo.train.checkpoint import CheckpointError, read_training_checkpoint, save_atomic
from spikezoo.train.config import (
    Config,
    RecipeError,
    apply_overrides,
    config_from_dict,
    list_recipes,
    load_recipe,
)
from spikezoo.train.data import DatasetError, load_digits_split
from spikezoo.train.engine import TrainingError, build_model, evaluate, train, validate
from spikezoo.train.logs import plot_curves
from spikezoo.train.losses import tet_loss

__all__ = [
    "CheckpointError",
    "Config",
    "DatasetError",
    "RecipeError",
    "TrainingError",
    "apply_overrides",
    "build_model",
    "config_from_dict",
    "evaluate",
    "list_recipes",
    "load_digits_split",
    "load_recipe",
    "plot_curves",
    "read_training_checkpoint",
    "save_atomic",
    "tet_loss",
    "train",
    "validate",
]
