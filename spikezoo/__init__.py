"""spikezoo: spiking vision transformers for PyTorch and timm.

``import spikezoo`` registers the models with timm, so ``timm.create_model("sdt_8_768")`` works.
The ``spikezoo`` command starts from :mod:`spikezoo_cli`, outside this package.
"""

from spikezoo import layers, models, neurons  # models: registers the models with timm
from spikezoo._version import __version__

__all__ = ["__version__", "layers", "models", "neurons"]
