"""spikezoo: spiking vision transformers for PyTorch and timm.

``import spikezoo`` registers the models with timm, so ``timm.create_model("sdt_8_768")`` works.
The ``spikezoo`` command starts from :mod:`spikezoo_cli`, outside this package.
"""

from spikezoo import layers, models, neurons  # models: registers the models with timm

__version__ = "0.1.0"

__all__ = ["__version__", "layers", "models", "neurons"]
