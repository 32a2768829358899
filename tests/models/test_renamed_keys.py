"""spikezoo's own checkpoints saved under old layer names (PLIF ``.lif.w``) still load."""

import re

import pytest
import torch
from safetensors.torch import save_file

from spikezoo.models._pretrained import weights_model_args
from spikezoo.models._registry import family_of
from tests.models.families import FAMILY_NAMES, NUM_CLASSES, tiny, tiny_family


def old_spikezoo_state(model: torch.nn.Module) -> dict:
    """``model``'s state dict as spikezoo saved it while ``ConvBN``'s neuron was ``lif``."""
    return {re.sub(r"\.neuron\.", ".lif.", k): v for k, v in model.state_dict().items()}


@pytest.mark.parametrize("family", FAMILY_NAMES)
def test_an_old_plif_checkpoint_loads_through_the_filter_and_load_state_dict(family, tmp_path):
    torch.manual_seed(0)
    # what pretrained=True implies below (a default tag's kd or spike levels), for every model
    implied = weights_model_args(tiny_family(family).entry_point, True, None)
    model = tiny(family, neuron="plif", **implied)
    old = old_spikezoo_state(model)
    assert any(".lif." in k for k in old)  # every family has a ConvBN with a neuron
    mapped = family_of(model).checkpoint_filter_fn(old, model)
    assert list(mapped) == list(model.state_dict())

    fresh = tiny(family, neuron="plif", **implied)
    fresh.load_state_dict(old)
    state = fresh.state_dict()
    assert all(torch.equal(state[k], v) for k, v in mapped.items())

    save_file(old, str(tmp_path / "old.safetensors"))
    overlay = dict(file=str(tmp_path / "old.safetensors"), num_classes=NUM_CLASSES)
    pretrained = tiny(family, pretrained=True, pretrained_cfg_overlay=overlay, neuron="plif")
    loaded = pretrained.state_dict()
    assert all(torch.equal(loaded[k], v) for k, v in model.state_dict().items())
