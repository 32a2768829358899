"""Converting checkpoints into timm model directories, their model cards, and publishing them
on the Hub. This package sits above the models (it builds them); reading checkpoint files,
the cache and finding the weights of ``pretrained=True`` are in :mod:`spikezoo.weights`.

See ``docs/weights.md``.
"""

from spikezoo.hub.convert import TrainingRun, convert_checkpoint, training_run
from spikezoo.hub.manifest import publish, read_manifest
from spikezoo.hub.push import PublishError, push_folder

__all__ = [
    "PublishError",
    "TrainingRun",
    "convert_checkpoint",
    "publish",
    "push_folder",
    "read_manifest",
    "training_run",
]
