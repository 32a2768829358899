"""A static image encoded once (``static_stem``): the model computes what it computes when the
stem runs at every step, forward, backward and BatchNorm statistics, in every family.

Float64 throughout, and every membrane that rounding reaches is checked to sit far from its
threshold (:func:`~tests.deploy.test_optimize.threshold_margin`), so no rounding difference
can flip a compared spike.
"""

import copy

import pytest
import torch
from torch import nn

from spikezoo.models import SpikingVisionModel
from spikezoo.neurons import MultiStepNeuron
from tests.deploy.test_optimize import randomise_norms, threshold_margin
from tests.models.families import FAMILY_NAMES, TIME_STEPS, tiny, tiny_family
from tests.models.test_behaviour import image


def _twins(family: str, train: bool) -> tuple[SpikingVisionModel, SpikingVisionModel]:
    torch.manual_seed(0)
    model = randomise_norms(tiny(family)).double().train(train)
    plain = copy.deepcopy(model)
    plain.set_static_encoding(False)
    return model, plain


def _run(model: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, list, list, torch.Tensor]:
    """Logits, each neuron's (module, input) and spikes in call order, and the input gradient."""
    inputs, spikes = [], []

    def hook(module, args, output):
        inputs.append((module, args[0].detach()))
        spikes.append(output.detach())

    handles = [
        m.register_forward_hook(hook) for m in model.modules() if isinstance(m, MultiStepNeuron)
    ]
    x = x.clone().requires_grad_()
    try:
        logits = model(x)
    finally:
        for handle in handles:
            handle.remove()
    if isinstance(logits, tuple):  # Meta-SpikeFormer's distillation pair
        logits = torch.stack(logits)
    (logits.square().sum() + logits.sum()).backward()
    return logits.detach(), inputs, spikes, x.grad


def _stem_batch_sizes(model: SpikingVisionModel) -> list[int]:
    """Hooks recording the batch size each convolution and BatchNorm of ``static_stem`` sees."""
    sizes = []
    for path in model.static_stem:
        for m in model.get_submodule(path).modules():
            if isinstance(m, nn.Conv2d | nn.modules.batchnorm._BatchNorm):
                m.register_forward_pre_hook(lambda module, args: sizes.append(args[0].shape[0]))
    return sizes


def _assert_gradients_equal(model: nn.Module, plain: nn.Module) -> None:
    """Every parameter's gradient equal to rounding: relative to the largest gradient of its
    module (a bias before a training-mode BatchNorm has a gradient that is rounding noise)."""
    for (name, module), other in zip(model.named_modules(), plain.modules(), strict=True):
        grads = [
            (n, p.grad) for n, p in module.named_parameters(recurse=False) if p.grad is not None
        ]
        if not grads:
            continue
        scale = max(g.abs().max().item() for _, g in grads)
        expected = dict(other.named_parameters(recurse=False))
        for param_name, grad in grads:
            torch.testing.assert_close(
                grad, expected[param_name].grad, rtol=1e-10, atol=1e-12 * scale,
                msg=f"{name}.{param_name}",
            )  # fmt: skip


@pytest.mark.parametrize("train", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("family", FAMILY_NAMES)
def test_static_image_encoded_once_is_exact(family, train):
    model, plain = _twins(family, train)
    assert model.static_stem, f"{family} declares no static_stem"
    x = image(model).double()
    batch = x.shape[0]
    sizes = _stem_batch_sizes(model)
    plain_sizes = _stem_batch_sizes(plain)
    logits, inputs, spikes, grad_x = _run(model, x)
    expected, _, expected_spikes, expected_grad_x = _run(plain, x)

    # the stem ran once on the batch, not once per step
    assert sizes and set(sizes) == {batch}, sizes
    assert set(plain_sizes) == {TIME_STEPS * batch}, plain_sizes
    # sums of spikes (integers) may meet a threshold exactly, with no rounding involved
    rounded = [(neuron, x) for neuron, x in inputs if not torch.equal(x, x.round())]
    assert threshold_margin(rounded) > 1e-9, "a membrane sits too close to its threshold"
    torch.testing.assert_close(logits, expected, rtol=1e-12, atol=1e-12)
    assert len(spikes) == len(expected_spikes)
    for i, (s, e) in enumerate(zip(spikes, expected_spikes, strict=True)):
        assert torch.equal(s, e), f"neuron call {i} fired differently"
    torch.testing.assert_close(
        grad_x, expected_grad_x, rtol=1e-10, atol=1e-12 * expected_grad_x.abs().max().item()
    )
    _assert_gradients_equal(model, plain)
    # BatchNorm running statistics (updated as over T copies), batch counts and DSSA rates
    for (key, value), other in zip(
        model.state_dict().items(), plain.state_dict().values(), strict=True
    ):
        torch.testing.assert_close(value, other, rtol=1e-12, atol=1e-15, msg=key)


# the mechanism names no family: one (the quickest) stands for all in the two tests below
CHEAP_FAMILY = "spiking_resformer"


def test_cumulative_batchnorm_statistics():
    """``momentum=None`` BatchNorms average every batch: two training calls, the same averages."""
    model, plain = _twins(CHEAP_FAMILY, train=True)
    for twin in (model, plain):
        for path in twin.static_stem:
            for m in twin.get_submodule(path).modules():
                if isinstance(m, nn.modules.batchnorm._BatchNorm):
                    m.momentum = None
    for scale in (1.0, 3.0):
        x = image(model).double() * scale
        with torch.no_grad():
            torch.testing.assert_close(model(x), plain(x), rtol=1e-12, atol=1e-12)
    for (key, value), other in zip(
        model.state_dict().items(), plain.state_dict().values(), strict=True
    ):
        torch.testing.assert_close(value, other, rtol=1e-12, atol=1e-15, msg=key)


def test_event_frames_run_every_step():
    """Frames ``[B, T, C, H, W]`` vary over time: the stem runs on every step."""
    model, plain = _twins(CHEAP_FAMILY, train=False)
    x = image(model).double()
    frames = torch.stack([x, 0.5 * x, 2.0 * x], dim=1)
    sizes = _stem_batch_sizes(model)
    with torch.no_grad():
        torch.testing.assert_close(model(frames), plain(frames), rtol=0, atol=0)
    assert set(sizes) == {3 * x.shape[0]}


@pytest.mark.parametrize(
    ("static_stem", "match"),
    [(("no_such_module",), "which the model has not"), (("head_lif",), "spiking neuron")],
)
def test_static_stem_must_name_modules_without_neurons(static_stem, match):
    family = FAMILY_NAMES[0]
    declared = type("Declared", (type(tiny(family)),), {"static_stem": static_stem})
    with pytest.raises(ValueError, match=match):
        declared(**tiny_family(family).args)


def test_set_static_encoding_takes_a_bool():
    model = tiny(FAMILY_NAMES[0])
    with pytest.raises(TypeError, match="enable must be True or False, got str"):
        model.set_static_encoding("no")


def test_a_call_that_raised_leaves_no_state_behind():
    model, plain = _twins(CHEAP_FAMILY, train=True)
    x = image(model).double()
    stem = model.get_submodule(model.static_stem[0])
    # raises after the stem ran on one step, before its output is expanded
    handle = stem.register_forward_hook(lambda *args: 1 / 0, prepend=True)
    with pytest.raises(ZeroDivisionError):
        model(x)
    handle.remove()
    plain.load_state_dict(model.state_dict())
    frames = torch.stack([x, 2.0 * x, 0.5 * x], dim=1)  # the next call: 3 frames, every step
    with torch.no_grad():
        torch.testing.assert_close(model(frames), plain(frames), rtol=0, atol=0)
    for (key, value), other in zip(
        model.state_dict().items(), plain.state_dict().values(), strict=True
    ):
        torch.testing.assert_close(value, other, rtol=0, atol=0, msg=key)


@pytest.mark.slow  # compiles a model
def test_a_compiled_model_encodes_once_in_eval_and_runs_every_step_in_training():
    """A compiled inference graph keeps the hooks; a compiled training step runs every step
    (the BatchNorm hooks swap buffers mid-call, which dynamo cannot trace)."""
    torch._dynamo.reset()
    model, plain = _twins(CHEAP_FAMILY, train=False)
    x = image(model).double()
    sizes = _stem_batch_sizes(model)
    compiled = torch.compile(model)
    with torch.no_grad():
        torch.testing.assert_close(compiled(x), plain(x), rtol=1e-12, atol=1e-12)
    assert sizes and set(sizes) == {x.shape[0]}, sizes
    sizes.clear()
    model.train()
    compiled(x).sum().backward()
    assert sizes and set(sizes) == {TIME_STEPS * x.shape[0]}, sizes
