"""timm's own exports of spikezoo models load back, and ``time_steps`` has one home."""

import json

import pytest
import timm
import torch
from safetensors.torch import save_file

from tests.hub.hub_helpers import assert_same_state, logits, tiny_authors_file
from tests.models.families import tiny_family

TINY_CIFAR = tiny_family("spike_driven_transformer").args


@pytest.mark.parametrize("time_steps", [None, 3])
def test_save_for_hf_then_local_dir_keeps_time_steps(tmp_path, time_steps):
    args = dict(TINY_CIFAR) if time_steps is None else dict(TINY_CIFAR, time_steps=time_steps)
    model = timm.create_model("sdt_2_512_cifar.cifar10", **args).eval()
    timm.models.save_for_hf(model, tmp_path, safe_serialization=True)
    config = json.loads((tmp_path / "config.json").read_text())
    assert "time_steps" not in config["pretrained_cfg"]

    loaded = timm.create_model(f"local-dir:{tmp_path}", pretrained=True).eval()

    assert loaded.time_steps == model.time_steps == (time_steps or 4)
    assert_same_state(loaded, model.state_dict())
    assert torch.equal(logits(loaded), logits(model))
    assert loaded.pretrained_cfg["top1"] == 95.6  # spikezoo's cfg field comes back too


def test_features_only_from_a_checkpoint_file(tmp_path):
    tiny = tiny_authors_file("sdt")
    features = timm.create_model(
        tiny.tag,
        pretrained=True,
        features_only=True,
        pretrained_cfg_overlay=dict(file=str(tiny.file), num_classes=tiny.num_classes),
        **tiny.args,
    )
    assert "state_dict" not in features.pretrained_cfg
    expected = tiny.expected_state()
    for key, value in features.model.state_dict().items():
        assert torch.equal(value, expected[key].to(value.dtype)), key


def test_pretrained_with_another_head_keeps_the_backbone(tmp_path):
    tiny = tiny_authors_file("sdt")
    save_file(tiny.expected_state(), tmp_path / "w.safetensors")
    overlay = dict(file=str(tmp_path / "w.safetensors"), num_classes=tiny.num_classes)
    model = timm.create_model(
        tiny.tag, pretrained=True, pretrained_cfg_overlay=overlay, num_classes=3, **tiny.args
    )
    assert model.num_classes == 3
    expected = tiny.expected_state()
    for key, value in model.state_dict().items():
        if not key.startswith("head."):
            assert torch.equal(value, expected[key]), key
