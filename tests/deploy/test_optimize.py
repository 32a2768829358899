"""spikezoo.deploy.optimize: the optimised model computes what the plain one does.

Folding BatchNorm rounds differently, so a membrane within rounding distance of a threshold
could fire in one model and not in the other. Each comparison therefore first measures, in the
plain model, how far every charged membrane is from its threshold, and requires that margin to
exceed the difference folding can make many times over (float64: 1e-9 against rounding near
1e-15; float32: 1e-4 against near 1e-6). With the margin shown, equal spikes are a property of
the models, not of the CPU's rounding.
"""

import copy

import pytest
import torch
from torch import nn

import spikezoo  # noqa: F401
from spikezoo.deploy import FoldedBatchNorm, fold_batchnorm, foldable_pairs, optimize
from spikezoo.models._registry import family_of, timm_module_name
from spikezoo.neurons import IntegerNeuron, SpikingNeuron
from spikezoo.neurons.dynamics import forward_sequence
from spikezoo.neurons.functional import neuron_config
from tests.models.families import FAMILY_NAMES, tiny
from tests.models.test_behaviour import image
from tests.reference import CASES, load_case

#: The BatchNorms each family keeps (every other one is folded): Meta-SpikeFormer's RepConv pads
#: with values computed from its BatchNorm's statistics, so the four RepConvs of each attention
#: block keep theirs.
KEPT = {
    "spike_driven_transformer": 0,
    "spiking_resformer": 0,
    "spike_driven_transformer_v2": 64,
    "spike_driven_transformer_v3": 0,
    "spikformer": 0,
    "spikingformer": 0,
}


def randomise_norms(model: nn.Module) -> nn.Module:
    """Give every BatchNorm statistics and an affine map far from the identity."""
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                if m.track_running_stats:
                    m.running_mean.normal_(0.0, 0.5)
                    m.running_var.uniform_(0.5, 2.0)
                m.weight.normal_(1.0, 0.3)
                m.bias.normal_(0.0, 0.3)
    return model


def record_spikes(model: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, list, list]:
    """The logits, each neuron layer's input and each one's spikes, in call order."""
    inputs, spikes = [], []

    def hook(module, args, output):
        inputs.append((module, args[0].detach()))
        spikes.append(output.detach())

    neurons = [m for m in model.modules() if isinstance(m, SpikingNeuron)]
    handles = [m.register_forward_hook(hook) for m in neurons]
    try:
        with torch.no_grad():
            logits = model(x)
    finally:
        for h in handles:
            h.remove()
    return logits, inputs, spikes


def threshold_margin(inputs: list) -> float:
    """The smallest distance of any charged membrane from its neuron's threshold (binary
    neurons; integer neurons are checked by :func:`assert_integer_counts_are_robust`)."""
    margin = float("inf")
    for neuron, x in inputs:
        if isinstance(neuron, IntegerNeuron):
            continue
        decay = neuron.decay()
        cfg = neuron_config(
            leaky=decay is not None,
            decay_input=neuron.decay_input,
            v_threshold=neuron.v_threshold,
            v_reset=neuron.v_reset,
            surrogate=neuron.surrogate,
            alpha=neuron.alpha,
            detach_reset=neuron.detach_reset,
        )
        flat = x.reshape(x.shape[0], -1).double()
        k = torch.as_tensor(0.0 if decay is None else decay, dtype=torch.float64).detach()
        v0 = torch.tensor(cfg.charge_reset, dtype=torch.float64)
        _, charged, _ = forward_sequence(flat, v0, k, cfg, keep_charged=True)
        margin = min(margin, (charged - cfg.v_threshold).abs().min().item())
    return margin


def assert_integer_counts_are_robust(inputs: list, optimised_inputs: list) -> None:
    """Each integer neuron input of the optimised model equals the plain model's, or lies ten
    times its difference from it away from every rounding boundary (``k + 1/2``, 0, D): the
    counts then agree whatever the CPU rounds in the last bits."""
    for (neuron, a), (_, b) in zip(inputs, optimised_inputs, strict=True):
        if not isinstance(neuron, IntegerNeuron):
            continue
        a, b = a.double(), b.double()
        boundary = torch.minimum((a - (torch.floor(a) + 0.5)).abs(), a.abs())
        boundary = torch.minimum(boundary, (a - neuron.levels).abs())
        differ = a != b
        assert (boundary[differ] > 10 * (a - b).abs()[differ]).all(), "an input is too close"


def assert_same_spikes(plain, optimised, x, margin, **tolerance):
    logits, inputs, spikes = record_spikes(plain, x)
    assert threshold_margin(inputs) > margin, "a membrane sits too close to its threshold"
    optimised_logits, optimised_inputs, optimised_spikes = record_spikes(optimised, x)
    assert_integer_counts_are_robust(inputs, optimised_inputs)
    assert len(optimised_spikes) == len(spikes)
    for i, (a, b) in enumerate(zip(optimised_spikes, spikes, strict=True)):
        assert torch.equal(a, b), f"neuron call {i} fired differently"
    torch.testing.assert_close(optimised_logits, logits, **tolerance)


@pytest.mark.parametrize("family", FAMILY_NAMES)
def test_every_conv_batchnorm_pair_is_folded(family):
    assert family in KEPT, f"add the BatchNorms {family} keeps to KEPT"
    model = tiny(family)
    norms = [n for n, m in model.named_modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    report = optimize(model, compile=False).deploy_report.folds
    assert len(report.skipped) == KEPT[family], str(report)
    assert sorted([p.norm for p in report.folded] + list(report.skipped)) == sorted(norms)
    layers = (nn.Conv1d, nn.Conv2d, nn.Linear)
    assert all(isinstance(model.get_submodule(p.layer), layers) for p in report.folded)
    # the input model is untouched
    assert all(isinstance(model.get_submodule(n), nn.modules.batchnorm._BatchNorm) for n in norms)


@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("family", FAMILY_NAMES)
def test_same_spikes_and_logits_in_float64(family, channels_last):
    plain = randomise_norms(tiny(family)).double().eval()
    optimised = optimize(plain, compile=False, channels_last=channels_last)
    x = image(plain).double()
    assert_same_spikes(plain, optimised, x, margin=1e-9, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("family", FAMILY_NAMES)
def test_float32_logits_within_1e_5(family):
    # float32 folding rounds differently: take the first seed whose membranes all keep 1e-4
    # from the threshold, so that no spike depends on the last bits
    for seed in range(10):
        torch.manual_seed(seed)
        plain = randomise_norms(tiny(family)).eval()
        x = image(plain, batch=1)
        if threshold_margin(record_spikes(plain, x)[1]) > 1e-4:
            break
    optimised = optimize(plain, compile=False, channels_last=False)
    assert_same_spikes(plain, optimised, x, margin=1e-4, rtol=0, atol=1e-5)


def _loaded(case):
    model = case.build()
    model.load_state_dict(family_of(model).checkpoint_filter_fn(case.state, model))
    return model


@pytest.mark.parametrize("name", CASES)
def test_reference_vectors(name):
    case = load_case(name)
    model = _loaded(case)
    optimised = optimize(model, compile=False, channels_last=True)
    family = timm_module_name(family_of(model))
    # the reference networks have the block counts of the small test networks
    assert len(optimised.deploy_report.folds.skipped) == KEPT[family]
    with torch.no_grad():
        logits = optimised(case.tensors["input"])
    torch.testing.assert_close(logits, case.tensors["logits_eval"], rtol=1e-6, atol=1e-9)


def test_training_mode_is_refused():
    optimised = optimize(tiny("spike_driven_transformer"), compile=False)
    x = image(optimised)
    optimised.train()
    with pytest.raises(RuntimeError, match=r"folded into 'patch_embed\.proj\.0\.conv'.*eval"):
        optimised(x)
    optimised.eval()
    assert optimised(x).shape == (2, 5)


def test_folded_norm_checks_the_layout_it_was_folded_for():
    folded = FoldedBatchNorm("head.bn", "head.fc", num_features=4, input_dims=2).eval()
    assert torch.equal(folded(torch.ones(3, 4)), torch.ones(3, 4))
    with pytest.raises(ValueError, match=r"2 dimensions with 4 channels.*\(3, 5, 4\)"):
        folded(torch.ones(3, 5, 4))


class PadWithNormBias(nn.Module):
    """Pads a BatchNorm's output with the BatchNorm's own bias (as RepConv-like layers do)."""

    def __init__(self, channels):
        super().__init__()
        self.bn = nn.BatchNorm2d(channels)

    def forward(self, x):
        return nn.functional.pad(self.bn(x), (1, 1, 1, 1)) + self.bn.bias.view(1, -1, 1, 1)


class Mixed(nn.Module):
    """Every way a BatchNorm can sit in a model, folded or not."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)  # folded
        self.residual_conv = nn.Conv2d(4, 4, 1)
        self.residual_bn = nn.BatchNorm2d(4)  # kept: the conv output is also added
        self.after_add = nn.BatchNorm2d(4)  # kept: normalises a sum
        self.pad_conv = nn.Conv2d(4, 4, 1)
        self.pad = PadWithNormBias(4)  # kept: its bias is read directly
        self.shared_conv = nn.Conv2d(4, 4, 1)
        self.shared_bn = nn.BatchNorm2d(4)  # kept: the conv runs twice
        self.conv1d = nn.Conv1d(4, 6, 1)
        self.bn1d = nn.BatchNorm1d(6)  # folded
        self.fc = nn.Linear(6, 8)
        self.fc_bn = nn.BatchNorm1d(8)  # folded
        self.stats_free = nn.Linear(8, 8)
        self.batch_stats = nn.BatchNorm1d(8, track_running_stats=False)  # kept

    def forward(self, x):
        x = self.bn(self.conv(x))
        r = self.residual_conv(x)
        x = self.after_add(self.residual_bn(r) + r)
        x = self.pad(self.pad_conv(x))
        x = self.shared_bn(self.shared_conv(x)) + self.shared_conv(x)
        x = self.bn1d(self.conv1d(x.flatten(2)))
        x = self.fc_bn(self.fc(x.mean(-1)))
        return self.batch_stats(self.stats_free(x))


def test_only_provable_pairs_are_folded():
    model = randomise_norms(Mixed()).double().eval()
    x = torch.randn(5, 3, 6, 6, dtype=torch.float64)
    expected = model(x)
    report = foldable_pairs(model)
    assert [(p.layer, p.norm) for p in report.folded] == [
        ("conv", "bn"),
        ("conv1d", "bn1d"),
        ("fc", "fc_bn"),
    ]
    assert report.skipped.keys() == {
        "residual_bn",
        "after_add",
        "pad.bn",
        "shared_bn",
        "batch_stats",
    }
    assert "also used elsewhere" in report.skipped["residual_bn"]
    assert "not the output of a convolution" in report.skipped["after_add"]
    assert "reads its" in report.skipped["pad.bn"]
    assert "more than once" in report.skipped["shared_bn"]
    assert "no running statistics" in report.skipped["batch_stats"]
    folded = copy.deepcopy(model)
    assert fold_batchnorm(folded).folded == report.folded
    assert isinstance(folded.bn, FoldedBatchNorm) and isinstance(folded.pad.bn, nn.BatchNorm2d)
    torch.testing.assert_close(folded(x), expected, rtol=1e-12, atol=1e-12)


class Branching(nn.Module):
    """A forward that branches on a tensor's value, which torch.fx cannot trace."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.bn = nn.BatchNorm2d(4)

    def forward(self, x):
        x = self.bn(self.conv(x))
        return x if x.sum() > 0 else -x


def test_untraceable_model_keeps_its_norms(caplog):
    model = randomise_norms(Branching()).eval()
    x = torch.randn(2, 3, 8, 8)
    optimised = optimize(model, compile=False)
    assert not optimised.deploy_report.folds.folded
    assert "torch.fx cannot trace the model" in optimised.deploy_report.folds.skipped["bn"]
    assert "no BatchNorm folded" in caplog.text
    assert isinstance(optimised.bn, nn.BatchNorm2d)
    torch.testing.assert_close(optimised(x), model(x))


def test_arguments_are_checked():
    model = tiny("spike_driven_transformer")
    with pytest.raises(TypeError, match=r"model must be a torch\.nn\.Module, got str"):
        optimize("sdt_8_384")
    with pytest.raises(TypeError, match="compile must be True or False, got str"):
        optimize(model, compile="yes")
    with pytest.raises(TypeError, match="channels_last must be True, False or None, got int"):
        optimize(model, channels_last=1)


def test_inplace_changes_the_model_itself():
    model = tiny("spiking_resformer")
    assert optimize(model, compile=False, inplace=True) is model
    assert isinstance(model.stem.bn, FoldedBatchNorm) and not model.training
    assert not any(p.requires_grad for p in model.parameters())
    # an optimised model can be traced, and optimised again: nothing is left to fold
    again = optimize(model, compile=False).deploy_report.folds
    assert not again.folded and not again.skipped
