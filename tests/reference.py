"""The authors' reference vectors (tests/data/reference, copied from shared/reference).

Each file was produced by the authors' code in float64 with random weights; see
``tests/data/reference/README.md``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import timm
import torch
from safetensors import safe_open
from torch import Tensor

import spikezoo  # noqa: F401  (registers the models)

REFERENCE_DIR = Path(__file__).parent / "data" / "reference"
CASES = (
    "sdt_imagenet_tiny",
    "sdt_cifar_tiny",
    "sdt_dvs_tiny",
    "resformer_imagenet_tiny",
    "resformer_cifar_tiny",
    "resformer_dvsg_tiny",
)


@dataclass
class ReferenceCase:
    name: str
    config: dict
    tensors: dict[str, Tensor]

    def section(self, prefix: str) -> dict[str, Tensor]:
        return {k[len(prefix) :]: v for k, v in self.tensors.items() if k.startswith(prefix)}

    @property
    def state(self) -> dict[str, Tensor]:
        return self.section("state.")

    @property
    def grads(self) -> dict[str, Tensor]:
        return self.section("grad.")

    def model_args(self) -> tuple[str, dict]:
        """The timm entry point and keyword arguments that build this case's network."""
        c = self.config
        if self.name.startswith("sdt"):
            k = c["kwargs"]
            return "sdt_8_384", dict(
                img_size=k["img_size_h"],
                in_chans=k["in_channels"],
                num_classes=k["num_classes"],
                embed_dim=k["embed_dims"],
                num_heads=k["num_heads"],
                mlp_ratio=k["mlp_ratios"],
                depth=k["depths"],
                time_steps=k["T"],
                pooling_stat=k["pooling_stat"],
                dvs=k.get("dvs_mode", False),
            )
        return "spikingresformer_ti", dict(
            img_size=c["img_size"],
            num_classes=c["num_classes"],
            depths=c["blocks_per_stage"],
            embed_dims=c["planes"],
            num_heads=c["num_heads"],
            patch_sizes=c["patch_sizes"],
            stem="conv3x3" if c["stem"].startswith("conv3x3") else "imagenet",
            group_size=c["group_size"],
            neuron=c["activation"],
            time_steps=c["T"],
        )

    def build(self, **overrides) -> torch.nn.Module:
        name, args = self.model_args()
        return timm.create_model(name, **dict(args, **overrides)).double()


def load_case(name: str) -> ReferenceCase:
    path = REFERENCE_DIR / f"{name}.safetensors"
    with safe_open(str(path), framework="pt") as f:
        config = json.loads(f.metadata()["config"])
        tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (safe_open is no dict)
    return ReferenceCase(name, config, tensors)
