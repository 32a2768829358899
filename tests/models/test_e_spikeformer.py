"""E-SpikeFormer base models: the authors' checkpoint layout, tags, levels and neurons."""

import argparse
import functools

import pytest
import timm
import torch

import spikezoo  # noqa: F401  (registers the models)
from spikezoo.hub.convert import convert_checkpoint
from spikezoo.models import spike_driven_transformer_v3 as sdt_v3
from spikezoo.neurons import IntegerNeuron, MultiStepLIF
from tests.reference import load_case

TINY = dict(embed_dim=(8, 16, 32, 40), num_heads=2, img_size=32, num_classes=10)


def authors_checkpoint(case, path):
    """The reference net's weights in ``main_finetune.py``'s layout, float32, as it saves
    them: ``{"model", "optimizer", "epoch", "scaler", "args": argparse.Namespace}``."""
    state = {k: v.float() if v.is_floating_point() else v for k, v in case.state.items()}
    args = argparse.Namespace(model="Efficient_Spiking_Transformer_t", input_size=32)
    torch.save({"model": state, "optimizer": {}, "epoch": 199, "scaler": {}, "args": args}, path)
    return path


def assert_holds_the_reference_weights(model, case):
    expected = sdt_v3.FAMILY.checkpoint_filter_fn(case.state, model)
    loaded = model.state_dict()
    assert loaded.keys() == expected.keys()
    for key, value in expected.items():
        torch.testing.assert_close(loaded[key], value.to(loaded[key].dtype), rtol=0, atol=0)


def test_the_authors_checkpoint_loads_through_create_model_and_convert(tmp_path):
    case = load_case("families/sdt3_tiny")
    path = authors_checkpoint(case, tmp_path / "checkpoint-199.pth")
    entry, args = case.model_args()
    overlay = dict(file=str(path), num_classes=args["num_classes"])
    model = timm.create_model(entry, pretrained=True, pretrained_cfg_overlay=overlay, **args)
    assert_holds_the_reference_weights(model, case)

    convert_checkpoint(path, "sdt_v3_t.in1k", tmp_path / "out", args)
    converted = timm.create_model(
        "sdt_v3_t",
        pretrained=True,
        pretrained_cfg_overlay=dict(
            file=str(tmp_path / "out" / "model.safetensors"), num_classes=args["num_classes"]
        ),
        **args,
    )
    assert_holds_the_reference_weights(converted, case)


def test_the_released_tags_say_t_x_d_and_the_papers_accuracy():
    cfgs = {tag: timm.models.get_pretrained_cfg(f"sdt_v3_{tag}.in1k") for tag in "tsml"}
    assert [cfgs[t].top1 for t in "tsml"] == [None, None, 78.5, 79.8]
    assert cfgs["t"].authors_file is None
    for tag in "sml":
        assert cfgs[tag].authors_file.drive_id and cfgs[tag].input_size == (3, 224, 224)
        assert any("T x D = 1 x 4" in note for note in cfgs[tag].notes)


def test_integer_neurons_with_the_levels_asked_for_and_the_head_reads_counts():
    model = timm.create_model("sdt_v3_t", levels=8, **TINY)
    neurons = [m for m in model.modules() if isinstance(m, IntegerNeuron)]
    assert model.time_steps == 1 and model.levels == 8
    assert {(n.levels, n.norm, n.rounding) for n in neurons if n is not model.head_lif} == {
        (8, 8.0, "half_even")
    }
    assert (model.head_lif.levels, model.head_lif.norm) == (8, 1.0)


def test_binary_neurons_build_the_same_architecture_over_time_steps():
    lif = functools.partial(MultiStepLIF, v_threshold=0.5, backend="torch")
    model = timm.create_model("sdt_v3_t", neuron=lif, time_steps=2, **TINY)
    assert not any(isinstance(m, IntegerNeuron) for m in model.modules())
    assert model.head_lif.v_threshold == 0.5
    assert model(torch.rand(2, 3, 32, 32)).shape == (2, 10)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"levels": 0}, "levels must be an integer >= 1, got 0"),
        ({"embed_dim": (8, 16, 32)}, r"embed_dim needs four widths, got \(8, 16, 32\)"),
        ({"num_heads": 3}, "num_heads"),
    ],
)
def test_bad_arguments_are_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        timm.create_model("sdt_v3_t", **{**TINY, **kwargs})
