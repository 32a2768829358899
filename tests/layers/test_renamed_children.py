"""State dicts saved before a layer renamed its neuron (``ConvBN.lif`` -> ``ConvBN.neuron``)."""

import re

import pytest
import torch
from torch import nn

from spikezoo.layers import ConvBN, SepConv, rename_old_keys
from spikezoo.neurons import MultiStepPLIF


def plif_layers() -> nn.Sequential:
    """Two layers whose neurons hold a parameter (PLIF's ``w``), one nested."""
    return nn.Sequential(
        ConvBN(4, 4, neuron=MultiStepPLIF),
        nn.Sequential(SepConv(4, neuron=MultiStepPLIF)),
    )


def with_old_names(state_dict: dict) -> dict:
    """``state_dict`` as spikezoo saved it while the neuron was called ``lif``."""
    return {re.sub(r"(^|\.)neuron\.", r"\1lif.", k): v for k, v in state_dict.items()}


def saved_state() -> tuple[dict, dict]:
    """A trained-looking state dict under the current and the old names."""
    torch.manual_seed(0)
    source = plif_layers()
    with torch.no_grad():
        for name, parameter in source.named_parameters():
            if name.endswith(".w"):
                parameter.fill_(0.75)
    state = source.state_dict()
    return state, with_old_names(state)


def test_the_old_names_are_what_earlier_versions_saved():
    _, old = saved_state()
    assert {"0.lif.w", "1.0.lif.w", "1.0.expand.lif.w"} <= old.keys()


def test_load_state_dict_reads_the_old_names():
    state, old = saved_state()
    model = plif_layers()
    assert model.load_state_dict(old) is not None  # strict: nothing missing or unexpected
    assert model[0].neuron.w.item() == 0.75 and model[1][0].expand.neuron.w.item() == 0.75
    loaded = model.state_dict()
    assert all(torch.equal(loaded[k], state[k]) for k in state)


def test_rename_old_keys_gives_the_current_names_in_order():
    state, old = saved_state()
    renamed = rename_old_keys(old, plif_layers())
    assert list(renamed) == list(state)
    assert all(renamed[k] is old[with_old_names({k: None}).popitem()[0]] for k in state)
    assert rename_old_keys(state, plif_layers()) == state  # current names pass through


def test_a_key_under_both_names_is_not_silently_dropped():
    state, old = saved_state()
    with pytest.raises(RuntimeError, match=r'Unexpected key\(s\) in state_dict: "0\.lif\.w"'):
        plif_layers().load_state_dict({**state, "0.lif.w": old["0.lif.w"]})
    assert "0.lif.w" in rename_old_keys({**state, "0.lif.w": old["0.lif.w"]}, plif_layers())
