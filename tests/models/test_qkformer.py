"""QKFormer's own behaviour: the stage-3 projection neuron over the batch, its layouts and
arguments, its pretrained tags and its checkpoints."""

import pytest
import timm
import torch

from spikezoo.layers import SSA
from spikezoo.models import CheckpointMismatchError
from spikezoo.models import qkformer as qk
from spikezoo.models._registry import family_of
from spikezoo.neurons import set_backend
from tests.reference import load_case


def _reference_model(**overrides):
    case = load_case("families/qkformer_tiny")  # T=2
    model = case.build(**overrides)
    model.load_state_dict(family_of(model).checkpoint_filter_fn(case.state, model))
    return set_backend(model, "torch").eval(), case  # eager: one batch size per call here


def _ssas(model):
    return [m for m in model.modules() if isinstance(m, SSA)]


def test_the_last_stage_projection_neuron_runs_over_t_times_b_by_default():
    model, case = _reference_model()
    assert _ssas(model) and all(ssa.proj_neuron_over_batch for ssa in _ssas(model))
    seen = []
    _ssas(model)[0].proj_lif.register_forward_hook(lambda m, args, out: seen.append(args[0]))
    images = torch.cat([case.tensors["input"], case.tensors["input"][:1].flip(-1)])  # B=3
    with torch.no_grad():
        model(images)
    assert seen[0].shape[0] == 2 * 3  # the neuron's time loop runs over T*B steps


def test_per_step_projection_neuron_makes_samples_independent_and_agrees_for_one_sample():
    flattened, case = _reference_model()
    per_step, _ = _reference_model(proj_neuron_over_batch=False)
    assert not any(ssa.proj_neuron_over_batch for ssa in _ssas(per_step))
    images = torch.cat([case.tensors["input"], case.tensors["input"][:1].flip(-1)])  # B=3
    with torch.no_grad():
        together = per_step(images)
        alone = [per_step(images[i : i + 1]) for i in range(3)]
        # a batch of one has no other sample to carry the membrane to: the two agree
        torch.testing.assert_close(flattened(images[:1]), alone[0], rtol=0, atol=0)
    torch.testing.assert_close(together, torch.cat(alone), rtol=1e-9, atol=1e-12)


def test_non_square_input_runs():
    model = timm.create_model("qkformer_4_384_cifar", embed_dim=32, depth=3, num_heads=2)
    set_backend(model, "torch")
    assert model.eval()(torch.rand(1, 3, 32, 48)).shape == (1, 10)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (dict(depth=3), "at least 4; got 3"),
        (dict(layout="cifar", depth=2), "at least 3; got 2"),
        (dict(embed_dim=100), "embed_dim must be a multiple of 8"),
        (dict(layout="video"), "layout must be one of"),
        (dict(num_heads=(2, 2)), "num_heads needs one entry per stage \\(3\\), got 2"),
    ],
)
def test_bad_architecture_arguments_say_what_is_needed(kwargs, message):
    with pytest.raises(ValueError, match=message):
        timm.create_model("qkformer_10_384", device="meta", **kwargs)


def test_layouts_reduce_as_the_authors_files_do():
    reductions = {
        name: [info["reduction"] for info in timm.create_model(name, device="meta").feature_info]
        for name in ("qkformer_10_384", "qkformer_4_384_cifar", "qkformer_2_256_dvs128")
    }
    assert reductions == {
        "qkformer_10_384": [4, 8, 16],
        "qkformer_4_384_cifar": [1, 2, 4],
        "qkformer_2_256_dvs128": [8, 16],
    }


def test_entry_points_default_to_the_papers_time_steps_and_inputs():
    dvs = timm.create_model("qkformer_2_256_dvs128", device="meta")
    assert (dvs.time_steps, dvs.in_chans, dvs.num_classes) == (16, 2, 11)
    assert timm.create_model("qkformer_10_768", device="meta").time_steps == 4
    heads = [ssa.num_heads for ssa in _ssas(dvs)]
    assert heads == [16]  # the DVS file hard-wires 16 heads


def test_pretrained_tags_carry_the_papers_accuracies():
    cfgs = {
        tag: cfg
        for name, default_cfg in qk.default_cfgs.items()
        for tag, cfg in ((f"{name}.{t}", c) for t, c in default_cfg.cfgs.items())
    }
    assert cfgs["qkformer_10_768.in1k"].top1 == 84.22
    assert cfgs["qkformer_10_768.in1k_384"].top1 == 85.65
    assert cfgs["qkformer_10_768.in1k_384"].input_size == (3, 384, 384)
    assert cfgs["qkformer_4_384_cifar.cifar10"].top1 == 96.18
    baidu = cfgs["qkformer_10_384.in1k"].authors_file
    assert baidu.page.startswith("https://pan.baidu.com/s/") and baidu.password == "abcd"


def test_a_checkpoint_of_another_qkformer_names_the_likely_model():
    with torch.device("meta"):
        cifar = timm.create_model("qkformer_4_384_cifar").state_dict()
        model = timm.create_model("qkformer_10_384")
    with pytest.raises(CheckpointMismatchError) as info:
        qk.FAMILY.checkpoint_filter_fn(cifar, model)
    assert info.value.likely_model == "qkformer_4_384_cifar"
    assert "most likely belongs to 'qkformer_4_384_cifar'" in str(info.value)


def test_a_checkpoint_of_another_family_names_that_family():
    with torch.device("meta"):
        sdt = timm.create_model("sdt_2_256_cifar").state_dict()
        model = timm.create_model("qkformer_4_384_cifar")
    with pytest.raises(CheckpointMismatchError) as info:
        qk.FAMILY.checkpoint_filter_fn(sdt, model)
    assert "stem.convs.1.conv.weight" in info.value.missing
    assert "blocks.0.attn.q.conv.weight" in info.value.unexpected
    assert info.value.likely_model == "sdt_2_256_cifar"
