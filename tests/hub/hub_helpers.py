"""The two authors'-format checkpoints, as tiny variants of real tags."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import huggingface_hub.constants as hf_constants
import timm
import torch

from spikezoo.models._registry import family_of
from spikezoo.weights import read_checkpoint
from tests.reference import REFERENCE_DIR, load_case


@dataclass
class TinyAuthorsFile:
    """An authors' checkpoint of a tiny network, posing as the weights of ``tag``."""

    tag: str
    file: Path
    args: dict  # the tiny architecture
    num_classes: int

    def create(self, name: str | None = None, **kwargs) -> torch.nn.Module:
        """``pretrained=True`` on the tag (its head has the tiny file's classes)."""
        overlay = dict(num_classes=self.num_classes, **kwargs.pop("pretrained_cfg_overlay", {}))
        return timm.create_model(
            name or self.tag,
            pretrained=True,
            pretrained_cfg_overlay=overlay,
            **dict(self.args, **kwargs),
        ).eval()

    def expected_state(self) -> dict[str, torch.Tensor]:
        """The file through the family's checkpoint filter."""
        model = timm.create_model(self.tag, num_classes=self.num_classes, **self.args)
        return family_of(model).checkpoint_filter_fn(read_checkpoint(self.file), model)

    def model_args(self) -> dict:
        return dict(self.args, num_classes=self.num_classes)


def tiny_authors_file(family: str) -> TinyAuthorsFile:
    case_name, file_name = {
        "sdt": ("sdt_imagenet_tiny", "sdt_imagenet_tiny.pth.tar"),
        "resformer": ("resformer_imagenet_tiny", "resformer_imagenet_tiny.pth"),
        "spikformer": ("families/spikformer_tiny", "families/spikformer_tiny.pth.tar"),
    }[family]
    entry, args = load_case(case_name).model_args()
    num_classes = args.pop("num_classes")
    return TinyAuthorsFile(f"{entry}.in1k", REFERENCE_DIR / file_name, args, num_classes)


def assert_same_state(model: torch.nn.Module, expected: dict[str, torch.Tensor]) -> None:
    loaded = model.state_dict()
    assert loaded.keys() == expected.keys()
    for key, value in expected.items():
        assert torch.equal(loaded[key], value.to(loaded[key].dtype)), key


def logits(model: torch.nn.Module) -> torch.Tensor:
    size = 2 * model.size_multiple
    images = torch.rand(2, model.in_chans, size, size, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        return model.eval()(images)


def cache_entries(root: Path) -> list[str]:
    """Everything under spikezoo's cache, relative to it."""
    return sorted(str(p.relative_to(root)) for p in root.rglob("*")) if root.exists() else []


def point_hub_at(monkeypatch, endpoint: str, tmp_path, offline: bool = False) -> None:
    """Settings for huggingface_hub, in the environment (for subprocesses) and in its
    constants (read once at import)."""
    cache = tmp_path / "hf"
    values = dict(
        HF_ENDPOINT=endpoint,
        HF_HOME=str(cache),
        HF_HUB_CACHE=str(cache / "hub"),
        HF_HUB_DISABLE_XET="1",
        HF_HUB_OFFLINE="1" if offline else "0",
    )
    for key, value in values.items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.setattr(hf_constants, "ENDPOINT", endpoint)
    monkeypatch.setattr(
        hf_constants,
        "HUGGINGFACE_CO_URL_TEMPLATE",
        endpoint + "/{repo_id}/resolve/{revision}/{filename}",
    )
    monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(cache / "hub"))
    monkeypatch.setattr(hf_constants, "HF_TOKEN_PATH", str(cache / "token"))
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", offline)
    monkeypatch.setattr(hf_constants, "HF_HUB_DISABLE_XET", True)
