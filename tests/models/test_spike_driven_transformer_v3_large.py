"""E-SpikeFormer's large models: tags and their spike levels, the authors' checkpoints, kd."""

import argparse
import json

import pytest
import timm
import torch

from spikezoo.analysis import OpCounter
from spikezoo.deploy import expand_to_binary
from spikezoo.hub import convert_checkpoint
from spikezoo.models import spike_driven_transformer_v3_large as large
from spikezoo.neurons import IntegerNeuron
from tests.deploy.test_binary import assert_counts_are_robust
from tests.models.families import tiny
from tests.reference import load_case

FAMILY = "spike_driven_transformer_v3_large"
TAG_LEVELS = {
    "sdt_v3_12_512.in1k_1x4": 4,
    "sdt_v3_12_512.in1k_1x8": 8,
    "sdt_v3_12_768.in1k_1x4": 4,
    "sdt_v3_12_768.in1k_1x8": 8,
    "sdt_v3_12_768.in1k_1x8_384": 8,
}


def _integer_neurons(model):
    return {name: m for name, m in model.named_modules() if isinstance(m, IntegerNeuron)}


@pytest.mark.parametrize(("tag", "levels"), TAG_LEVELS.items())
def test_a_tag_builds_its_levels_and_distillation_head(tag, levels):
    with torch.device("meta"):
        model = timm.create_model(tag)
    assert model.levels == levels and model.head_kd is not None and model.time_steps == 1
    neurons = _integer_neurons(model)
    assert {m.levels for m in neurons.values()} == {levels}
    assert neurons.pop("head_kd_neuron").norm == 1
    assert {m.norm for m in neurons.values()} == {levels}
    size = 384 if tag.endswith("_384") else 224
    assert model.pretrained_cfg["input_size"] == (3, size, size)
    assert model.pretrained_cfg["authors_file"]["drive_id"]


def test_1x4_and_1x8_weights_differ_only_in_the_tags_levels():
    with torch.device("meta"):
        four = timm.create_model("sdt_v3_12_768.in1k_1x4")
        eight = timm.create_model("sdt_v3_12_768.in1k_1x8")
        overridden = timm.create_model("sdt_v3_12_768.in1k_1x8", levels=4, kd=False)
        plain = timm.create_model("sdt_v3_12_768")
    shapes = {k: v.shape for k, v in four.state_dict().items()}
    assert shapes == {k: v.shape for k, v in eight.state_dict().items()}
    assert (four.levels, eight.levels, overridden.levels, plain.levels) == (4, 8, 4, 4)
    assert overridden.head_kd is None and plain.head_kd is None


def test_every_neuron_rounds_half_up_with_the_open_gradient_window():
    model = tiny(FAMILY, levels=8)
    neurons = _integer_neurons(model)
    assert len(neurons) == len(model.spiking_neurons())
    assert all(m.rounding == "half_up" and m.gradient_window == "open" for m in neurons.values())
    assert {m.levels for m in neurons.values()} == {8}


def _authors_checkpoint(tmp_path, case, state):
    """``state`` in the layout of the authors' ``main_finetune.py`` (``misc.save_model``)."""
    args = argparse.Namespace(model="spikformer12_768", kd=True, time_steps=1)
    checkpoint = {"model": state, "optimizer": {}, "epoch": 99, "scaler": {}, "args": args}
    path = tmp_path / "checkpoint-99.pth"
    torch.save(checkpoint, path)
    return path


def _architecture(case):
    _, args = case.model_args()
    return {k: v for k, v in args.items() if k not in ("num_classes", "kd", "levels")}


def test_authors_checkpoint_loads_through_the_tag_and_gives_the_authors_logits(tmp_path):
    case = load_case("families/sdt3_large_tiny")
    path = _authors_checkpoint(tmp_path, case, case.state)
    model = timm.create_model(
        "sdt_v3_12_768.in1k_1x4",
        pretrained=True,
        pretrained_cfg_overlay=dict(file=str(path), num_classes=10),
        num_classes=10,
        dtype=torch.float64,
        **_architecture(case),
    )
    expected = large.FAMILY.checkpoint_filter_fn(case.state, model)
    for key, value in model.state_dict().items():
        torch.testing.assert_close(value, expected[key], rtol=0, atol=0, msg=key)
    with torch.no_grad():
        logits = model.eval()(case.tensors["input"])
    torch.testing.assert_close(logits, case.tensors["logits_eval"], rtol=1e-6, atol=1e-9)


def test_spikezoo_convert_keeps_the_tags_levels(tmp_path):
    case = load_case("families/sdt3_large_tiny")
    state = {k: v.float() if v.is_floating_point() else v for k, v in case.state.items()}
    path = _authors_checkpoint(tmp_path, case, state)
    args = dict(_architecture(case), num_classes=10)
    out = tmp_path / "converted"
    convert_checkpoint(path, "sdt_v3_12_768.in1k_1x8", out, model_args=args)
    config = json.loads((out / "config.json").read_text())
    assert config["pretrained_cfg"]["tag"] == "in1k_1x8"

    converted = timm.create_model(f"local-dir:{out}", pretrained=True)
    assert converted.levels == 8 and converted.head_kd is not None
    expected = large.FAMILY.checkpoint_filter_fn(state, converted)
    for key, value in converted.state_dict().items():
        torch.testing.assert_close(value, expected[key], rtol=0, atol=0, msg=key)


def test_fine_tuning_the_kd_weights_to_10_classes_resets_both_heads(tmp_path):
    case = load_case("families/sdt3_base_tiny")
    _, args = case.model_args()
    state = dict(case.state)
    for head in ("head", "head_kd"):
        state[f"{head}.weight"] = torch.randn(1000, args["embed_dim"][-1], dtype=torch.float64)
        state[f"{head}.bias"] = torch.randn(1000, dtype=torch.float64)
    path = _authors_checkpoint(tmp_path, case, state)

    model = timm.create_model(
        "sdt_v3_12_512.in1k_1x8",
        pretrained=True,
        pretrained_cfg_overlay=dict(file=str(path)),
        num_classes=10,
        **_architecture(case),
    )
    assert model.pretrained_cfg["classifier"] == ("head", "head_kd")
    assert model.head.out_features == model.head_kd.out_features == 10 and model.levels == 8
    expected = large.FAMILY.checkpoint_filter_fn(state, model)
    for key, value in model.state_dict().items():
        if not key.startswith(("head.", "head_kd.")):
            exact = expected[key].to(value.dtype)
            torch.testing.assert_close(value, exact, rtol=0, atol=0, msg=key)
    logits, logits_kd = model.train()(torch.rand(2, 3, 32, 32))
    assert logits.shape == logits_kd.shape == (2, 10)

    model.reset_classifier(3)
    assert model.head.out_features == model.head_kd.out_features == 3


def test_the_distillation_head_reads_the_spike_counts_and_head_the_membranes():
    model = tiny(FAMILY, kd=True).eval()
    pooled = torch.tensor([[[-1.0, 0.2, 1.7, 3.2, 9.0]]])  # [T, B, C]
    assert model.head_input(pooled.unsqueeze(-1).unsqueeze(-1)).equal(pooled)
    assert model.head_kd_input(pooled).tolist() == [[[0.0, 0.0, 2.0, 3.0, 4.0]]]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (dict(levels=0), "levels must be an integer >= 1, got 0"),
        (dict(levels=2.5), "levels must be an integer >= 1, got 2.5"),
        (dict(embed_dim=(8, 16)), r"embed_dim needs three widths, got \(8, 16\)"),
        (dict(depth=0), "depth must be an integer >= 1, got 0"),
        (dict(num_heads=3), "num_heads"),
    ],
)
def test_bad_arguments_are_refused_with_what_was_expected(args, message):
    with pytest.raises(ValueError, match=message):
        tiny(FAMILY, **args)


def test_a_kd_checkpoint_needs_a_kd_model():
    case = load_case("families/sdt3_large_tiny")
    model = case.build(kd=False)
    with pytest.raises(ValueError, match="create the model with kd=True"):
        large.FAMILY.checkpoint_filter_fn(case.state, model)


def _reference_model(name):
    case = load_case(name)
    model = case.build()
    model.load_state_dict(large.FAMILY.checkpoint_filter_fn(case.state, model))
    return model.eval(), case.tensors["input"], case.tensors["logits_eval"]


@pytest.mark.parametrize("name", ["families/sdt3_large_tiny", "families/sdt3_base_tiny"])
def test_the_binary_expansion_gives_the_reference_logits(name):
    model, x, reference = _reference_model(name)
    binary = expand_to_binary(model)
    assert_counts_are_robust(model, binary, x)
    with torch.no_grad():
        torch.testing.assert_close(binary(x), reference, rtol=0, atol=1e-9)


def test_the_integer_sop_count_equals_the_binary_expansions():
    torch.manual_seed(0)
    model = tiny(FAMILY, kd=True).double().eval()
    x = torch.rand(1, 3, 32, 32, dtype=torch.float64) * 2
    binary = expand_to_binary(model)
    assert_counts_are_robust(model, binary, x)
    with torch.no_grad(), OpCounter(model) as integer, OpCounter(binary) as expanded:
        model(x)
        binary(x)
    integer_layers, binary_layers = integer.report().layers, expanded.report().layers
    assert len(integer_layers) == len(binary_layers)
    for int_layer, bin_layer in zip(integer_layers, binary_layers, strict=True):
        assert (int_layer.sops, int_layer.macs) == (bin_layer.sops, bin_layer.macs), int_layer.name
    assert integer.report().sops == expanded.report().sops > 0
