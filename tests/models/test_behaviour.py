"""Model-level behaviour on tiny configurations: inputs, outputs, precision, compile, errors."""

import copy

import pytest
import timm
import torch
from timm.models import group_parameters
from timm.optim import param_groups_weight_decay
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from spikezoo.layers import DSSA, freeze_firing_rates
from spikezoo.layers.defaults import NEURON_TYPES, PAPER_NEURONS, neuron_factory
from spikezoo.neurons import MultiStepNeuron, MultiStepPLIF
from tests.models.families import FAMILY_NAMES, tiny, tiny_family

SDT, RESFORMER = "spike_driven_transformer", "spiking_resformer"
SDT_V2 = "spike_driven_transformer_v2"


def image(model, batch=2, scale=2):
    size = scale * model.size_multiple
    return torch.randn(batch, model.in_chans, size, size)


@pytest.mark.parametrize("family", FAMILY_NAMES)
def test_event_frames_bring_their_own_time_steps(family):
    model = tiny(family).double().eval()  # float64: no last-bit difference can flip a spike
    x = image(model).double()
    frames = torch.stack([x, x * 0.5, x * 2.0], dim=1)  # [B, T=3, C, H, W]
    model.per_step_logits = True
    assert model(frames).shape == (3, 2, 5)
    repeated = x.unsqueeze(1).expand(-1, model.time_steps, -1, -1, -1)
    torch.testing.assert_close(model(repeated), model(x))


@pytest.mark.parametrize("family", FAMILY_NAMES)
def test_per_step_logits_average_to_the_output(family):
    model = tiny(family, per_step_logits=True).eval()
    x = image(model)
    per_step = model(x)
    assert per_step.shape == (model.time_steps, 2, 5)
    model.per_step_logits = False
    torch.testing.assert_close(per_step.mean(0), model(x))


@pytest.mark.parametrize("family", FAMILY_NAMES)
def test_token_logits_without_global_pool(family):
    model = tiny(family, global_pool="").eval()
    x = image(model)
    tokens = (x.shape[-1] // model.feature_info[-1]["reduction"]) ** 2
    assert model(x).shape == (2, tokens, 5)


@pytest.mark.parametrize("family", FAMILY_NAMES)
def test_float64_channels_last_and_bf16_autocast(family):
    # Layouts are compared in float64 only: in float32 a last-bit difference between two
    # convolution kernels can flip a spike. float32 and bf16 are checked for running cleanly.
    model = tiny(family).double().eval()
    x = image(model).double()
    reference = model(x)
    assert reference.dtype == torch.float64
    model.to(memory_format=torch.channels_last)
    cl = model(x.to(memory_format=torch.channels_last))
    torch.testing.assert_close(cl, reference)
    model.float()
    single = model(x.float())
    assert single.dtype == torch.float32 and single.shape == reference.shape
    assert torch.isfinite(single).all()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        low = model(x.float())
    assert torch.isfinite(low).all() and low.shape == reference.shape


# Meta-SpikeFormer has no one-block network: compiling its 8 blocks takes over 20 minutes here
@pytest.mark.slow
@pytest.mark.parametrize("family", [f for f in FAMILY_NAMES if tiny_family(f).shallow is not None])
def test_torch_compile_matches_eager(family):
    # A fresh dynamo state: the families share SpikingVisionModel.forward, and a second model
    # would otherwise be traced with dynamic shapes, which inductor 2.14 cannot compile here.
    torch._dynamo.reset()
    # float64 so that reordered arithmetic cannot flip a spike
    model = tiny(family, **tiny_family(family).shallow)
    model = model.double().train()
    twin = copy.deepcopy(model)
    x = image(model, batch=1).double()
    eager = model(x)
    eager.sum().backward()
    compiled = torch.compile(twin)(x)
    compiled.sum().backward()
    torch.testing.assert_close(compiled, eager)
    for (name, p), q in zip(model.named_parameters(), twin.parameters(), strict=True):
        torch.testing.assert_close(q.grad, p.grad, msg=name)


def test_resformer_runs_at_other_resolutions():
    model = tiny(RESFORMER).eval()
    small, large = image(model, scale=2), image(model, scale=3)
    assert model(small).shape == model(large).shape == (2, 5)


@pytest.mark.parametrize("family", FAMILY_NAMES)
def test_forward_intermediates_time_reductions(family):
    model = tiny(family).eval()
    x = image(model)
    final, maps = model.forward_intermediates(x, time_reduction="none")
    assert final.shape[:2] == (model.time_steps, 2)
    torch.testing.assert_close(maps[-1], final.transpose(0, 1))
    means = model.forward_intermediates(x, intermediates_only=True)
    torch.testing.assert_close(means[-1], final.mean(0))
    last = model.forward_intermediates(
        x, indices=[0], intermediates_only=True, time_reduction="last"
    )
    torch.testing.assert_close(last[0], maps[0][:, -1])
    early = model.forward_intermediates(x, indices=[0], stop_early=True, intermediates_only=True)
    torch.testing.assert_close(early[0], means[0])
    with pytest.raises(ValueError, match="time_reduction must be one of"):
        model.forward_intermediates(x, time_reduction="max")


@pytest.mark.parametrize("family", FAMILY_NAMES)
def test_prune_intermediate_layers(family):
    model = tiny(family).eval()
    x = image(model)
    kept = model.prune_intermediate_layers([0])
    assert kept == [0] and len(model.units) == 1 and model.num_classes == 0
    tokens = (x.shape[-1] // model.feature_info[0]["reduction"]) ** 2
    assert model(x).shape == (2, tokens, model.feature_info[0]["num_chs"])


@pytest.mark.parametrize("family", FAMILY_NAMES)
def test_plif_time_constants_are_listed_for_no_weight_decay(family):
    model = tiny(family, neuron="plif")
    names = model.no_weight_decay()
    plif = [n for n, m in model.spiking_neurons() if isinstance(m, MultiStepPLIF)]
    assert names == {f"{n}.w" for n in plif} and names
    groups = param_groups_weight_decay(model, weight_decay=0.05, no_weight_decay_list=names)
    decayed = {id(p) for p in groups[1]["params"]}
    assert all(id(model.get_parameter(n)) not in decayed for n in names)


@pytest.mark.parametrize("family", FAMILY_NAMES)
def test_group_matcher_covers_every_parameter(family):
    model = tiny(family)
    groups = group_parameters(model, model.group_matcher())
    grouped = {name for names in groups.values() for name in names}
    assert grouped == {n for n, _ in model.named_parameters()}
    assert len(groups) > 2


def test_neuron_count_and_hooks():
    model = tiny(SDT)
    neurons = model.spiking_neurons()
    # SPS 3 + rpe 1; per block: SDSA 5 + MLP 2; head 1
    assert len(neurons) == 4 + 2 * 7 + 1
    rates = {}
    for name, module in neurons:
        module.register_forward_hook(lambda m, i, o, name=name: rates.__setitem__(name, o.mean()))
    model(image(model))
    assert set(rates) == {n for n, _ in neurons}
    assert all(0 <= r <= 1 for r in rates.values())


@pytest.mark.parametrize("family", FAMILY_NAMES)
def test_bad_input_is_refused_with_the_numbers(family):
    model = tiny(family)
    multiple = model.size_multiple
    with pytest.raises(ValueError, match=r"expects images \[B, C, H, W\]"):
        model(torch.randn(3, 32, 32))
    with pytest.raises(ValueError, match="in_chans=3, got 1 channels"):
        model(torch.randn(2, 1, 2 * multiple, 2 * multiple))
    with pytest.raises(ValueError, match=f"multiples of {multiple}, got {multiple + 1}x"):
        model(torch.randn(2, 3, multiple + 1, multiple + 1))
    with pytest.raises(ValueError, match=f"multiples of {multiple}"):
        tiny(family, img_size=multiple + 1)
    with pytest.raises(ValueError, match="unknown neuron 'alif'"):
        tiny(family, neuron="alif")
    with pytest.raises(ValueError, match="global_pool must be one of"):
        tiny(family, global_pool="max")


def test_resformer_stage_arguments_must_agree():
    with pytest.raises(ValueError, match="one entry per stage, got 2, 3, 2 and 2"):
        tiny(RESFORMER, embed_dims=(16, 32, 64))
    with pytest.raises(ValueError, match="stem must be one of"):
        tiny(RESFORMER, stem="patchify")


@pytest.mark.parametrize("mode", ["eval", "frozen_training"])
def test_never_estimated_dssa_rates_give_finite_gradients(mode):
    # eval() before any training step, or training with frozen rates: each DSSA uses the
    # batch's own rate and leaves its buffers alone (the authors' scale is infinite here)
    model = timm.create_model("spikingresformer_cifar", num_classes=10, time_steps=1)
    model.train(mode == "frozen_training")
    x = torch.randn(2, 3, 32, 32, requires_grad=True)
    with freeze_firing_rates(model):
        out = model(x)
        out.square().sum().backward()
    assert torch.isfinite(out).all()
    # the authors' infinite scale sent input gradients to ~1e33 before they turned NaN
    assert torch.isfinite(x.grad).all() and x.grad.abs().max() < 1e6
    for name, param in model.named_parameters():
        assert param.grad is not None and torch.isfinite(param.grad).all(), name
    layers = [m for m in model.modules() if isinstance(m, DSSA)]
    assert all((m.firing_rate_x == 0).all() and (m.firing_rate_attn == 0).all() for m in layers)


@pytest.mark.parametrize("family", FAMILY_NAMES)
@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (
            dict(num_classes=-1),
            r"num_classes must be an integer >= 0 \(0: no classifier head\), got -1",
        ),
        (dict(num_classes=2.0), "num_classes must be an integer >= 0 .*, got 2.0"),
        (dict(time_steps=2.5), "time_steps must be an integer >= 1, got 2.5"),
        (dict(time_steps=True), "time_steps must be an integer >= 1, got True"),
        (dict(time_steps="4"), "time_steps must be an integer >= 1, got '4'"),
        (dict(time_steps=0), "time_steps must be an integer >= 1, got 0"),
        (dict(in_chans=0), "in_chans must be an integer >= 1, got 0"),
        (dict(drop_path_rate=1.0), r"drop_path_rate must be a number in \[0, 1\), got 1.0"),
    ],
)
def test_bad_arguments_name_the_argument(family, overrides, message):
    with pytest.raises(ValueError, match=message):
        tiny(family, **overrides)


@pytest.mark.parametrize(
    ("family", "overrides", "message"),
    [
        (SDT, dict(num_heads=0), "num_heads must be an integer >= 1, got 0"),
        (SDT, dict(depth=0), "depth must be an integer >= 1, got 0"),
        (SDT, dict(mlp_ratio=0), "mlp_ratio must be a positive number, got 0"),
        (SDT, dict(pooling_stat=["0", "0", "1", "1"]), "pooling_stat flags must be booleans"),
        (RESFORMER, dict(num_heads=(1, 0)), r"num_heads\[1\] must be an integer >= 1, got 0"),
        (RESFORMER, dict(patch_sizes=(0, 1)), r"patch_sizes\[0\] must be an integer >= 1, got 0"),
        (RESFORMER, dict(embed_dims=(16, 0)), r"embed_dims\[1\] must be an integer >= 1, got 0"),
        (RESFORMER, dict(group_size=0), "group_size must be an integer >= 1, got 0"),
        (SDT_V2, dict(embed_dims=(8, 16, 32)), r"embed_dims needs four widths, got \(8, 16, 32\)"),
        (SDT_V2, dict(embed_dims=(1, 16, 32, 40)), r"embed_dims\[0\] must be an integer >= 2"),
        (SDT_V2, dict(num_heads=3), r"dim \(32\) must be divisible by num_heads \(3\)"),
        (SDT_V2, dict(mlp_ratio=0), "mlp_ratio must be an integer >= 1, got 0"),
    ],
)
def test_bad_family_arguments_name_the_argument(family, overrides, message):
    with pytest.raises(ValueError, match=message):
        tiny(family, **overrides)


@pytest.mark.parametrize("family", FAMILY_NAMES)
def test_reset_classifier_refuses_a_negative_class_count(family):
    model = tiny(family)
    with pytest.raises(ValueError, match="num_classes must be an integer >= 0"):
        model.reset_classifier(-1)
    assert model.num_classes == 5 and model.get_classifier().out_features == 5


@pytest.mark.parametrize("family", FAMILY_NAMES)
def test_an_integer_image_is_refused_with_the_conversion(family):
    model = tiny(family)
    pixels = torch.randint(0, 256, image(model).shape, dtype=torch.uint8)
    message = (
        r"expects a floating-point image, got dtype torch.uint8; convert it first, "
        r"e.g. x.float\(\) / 255"
    )
    with pytest.raises(TypeError, match=message):
        model(pixels)


def bad_feature_indices(count):
    """Wrong ``indices`` for a model of ``count`` feature units, with the error they get."""
    listed = rf"\[{', '.join(map(str, range(count)))}\]"
    from_end = rf"\[{', '.join(map(str, range(-count, 0)))}\]"
    return {
        "before_the_first": (
            (-count - 2,),
            rf"indices \(out_indices\) \({-count - 2},\) name no feature unit: \[{-count - 2}\]; "
            rf"\w+ has {count} \({listed} or {from_end} from the end\)",
        ),
        "past_the_last": (
            (0, count),
            rf"indices \(out_indices\) \(0, {count}\) name no feature unit: \[{count}\]",
        ),
        "empty": ((), r"indices \(out_indices\) must name at least one feature unit, got \(\)"),
        "too_many": (
            count + 1,
            rf"indices \(out_indices\) as an int takes the last n of the {count} feature units, "
            rf"so 1 <= n <= {count}; got {count + 1}",
        ),
        "none": (0, rf"so 1 <= n <= {count}; got 0"),
        "a_string": ("0", "indices must be an int or a sequence of ints, got '0'"),
    }


@pytest.mark.parametrize("family", FAMILY_NAMES)
@pytest.mark.parametrize("case", list(bad_feature_indices(2)))
def test_feature_indices_out_of_range_say_what_is_valid(family, case):
    model = tiny(family)
    count = len(model.units)
    indices, message = bad_feature_indices(count)[case]
    with pytest.raises(ValueError, match=message):
        model.forward_intermediates(image(model), indices=indices)
    with pytest.raises(ValueError, match=message):
        tiny(family, features_only=True, out_indices=indices)
    assert len(model.units) == count  # nothing was pruned


class _Allocations(TorchDispatchMode):
    """The bytes of every storage that an operation creates off the meta device."""

    def __init__(self) -> None:
        super().__init__()
        self.storages: dict[int, int] = {}

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in tree_leaves(out):
            if isinstance(t, torch.Tensor) and not t.is_meta:
                storage = t.untyped_storage()
                self.storages[storage.data_ptr()] = storage.nbytes()
        return out


@pytest.mark.parametrize("family", FAMILY_NAMES)
def test_a_full_size_model_built_on_meta_allocates_nothing_elsewhere(family):
    with _Allocations() as allocations:
        model = timm.create_model(tiny_family(family).entry_point, device="meta")
    assert all(t.is_meta for t in [*model.parameters(), *model.buffers()])
    # timm's drop-path schedule is up to 12 floats on the CPU (Meta-SpikeFormer 8, E-SpikeFormer
    # large 12); nothing else is
    assert sum(allocations.storages.values()) <= 12 * 4


@pytest.mark.parametrize("family", FAMILY_NAMES)
def test_a_model_built_in_float64_equals_the_float32_model_converted(family):
    torch.manual_seed(0)
    built = tiny(family, dtype=torch.float64).eval()
    torch.manual_seed(0)
    converted = tiny(family).double().eval()
    expected = converted.state_dict()
    for key, value in built.state_dict().items():
        assert value.dtype == expected[key].dtype, key
        torch.testing.assert_close(value, expected[key], rtol=0, atol=0, msg=key)
    x = image(built).double()
    torch.testing.assert_close(built(x), converted(x), rtol=0, atol=0)


@pytest.mark.parametrize("family", FAMILY_NAMES)
@pytest.mark.parametrize("neuron", ["lif", "plif"])
def test_every_neuron_of_a_model_has_its_papers_settings(family, neuron):
    model = tiny(family, neuron=neuron)
    settings = PAPER_NEURONS[model.paper]
    neurons = [m for m in model.modules() if isinstance(m, MultiStepNeuron)]
    assert neurons and all(type(m) is NEURON_TYPES[neuron] for m in neurons)
    assert all(m.surrogate == settings["surrogate"] for m in neurons)
    with pytest.raises(ValueError, match="unknown paper 'no_paper'; expected one of"):
        neuron_factory(neuron, "no_paper")


@pytest.mark.parametrize("family", FAMILY_NAMES)
def test_an_input_of_another_dtype_than_the_weights_names_both_and_the_fix(family):
    model = tiny(family).eval()
    x = image(model)
    with pytest.raises(TypeError) as info:
        model(x.half())
    assert str(info.value) == (
        f"{type(model).__name__} has torch.float32 weights, got a torch.float16 input; give both "
        "one dtype (e.g. model.to(torch.float16), or x.to(torch.float32)), or run under "
        "torch.autocast for mixed precision"
    )
    with torch.autocast("cpu", dtype=torch.bfloat16):  # mixed precision stays allowed
        assert torch.isfinite(model(x.bfloat16())).all()
