"""spikezoo: spiking vision transformers for PyTorch and timm.

``import spikezoo`` registers the models with timm, so ``timm.create_model("sdt_8_768")`` works.
"""

__version__ = "0.1.0"

from spikezoo import hub, layers, models, neurons

__all__ = ["__version__", "hub", "layers", "models", "neurons"]
