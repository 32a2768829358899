"""BatchNorm calibration: the statistics of one pass over the input, and nothing else changed."""

import pytest
import torch
from torch import nn

from spikezoo.analysis import calibrate_batchnorm, set_batchnorm_statistics
from tests.analysis.tiny_models import SDT, eager
from tests.models.families import tiny


def conv_bn(momentum: float = 0.1) -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4, momentum=momentum), nn.ReLU())


def test_the_statistics_are_those_of_the_batch_and_the_rest_is_kept():
    model = conv_bn(momentum=0.3)
    batch = torch.randn(5, 3, 8, 8, dtype=torch.float64)
    model.double()
    features = model[0](batch)
    set_batchnorm_statistics(model, batch)
    norm = model[1]
    torch.testing.assert_close(norm.running_mean, features.mean((0, 2, 3)))
    torch.testing.assert_close(norm.running_var, features.var((0, 2, 3), unbiased=True))
    assert norm.momentum == 0.3 and norm.num_batches_tracked == 1
    assert not model.training


def test_calibrate_batchnorm_adds_the_three_mirror_images():
    images = torch.randn(2, 3, 8, 8)
    mirrored = torch.cat([images, images.flip(-1), images.flip(-2), images.flip(-1, -2)])
    calibrated, expected = conv_bn(), conv_bn()
    calibrate_batchnorm(calibrated, images)
    set_batchnorm_statistics(expected, mirrored)
    assert torch.equal(calibrated[1].running_mean, expected[1].running_mean)
    assert torch.equal(calibrated[1].running_var, expected[1].running_var)


def test_a_random_spiking_model_spikes_in_every_layer_after_calibration():
    torch.manual_seed(0)
    model = eager(tiny(SDT))
    images = torch.rand(2, 3, 32, 32)
    rates = {}
    for name, neuron in model.spiking_neurons():
        neuron.register_forward_hook(
            lambda _m, _i, out, name=name: rates.__setitem__(name, out.mean().item())
        )
    calibrate_batchnorm(model, images[:1])
    with torch.no_grad():
        model(images)
    assert len(rates) == len(model.spiking_neurons())
    assert all(0.0 < rate < 1.0 for rate in rates.values()), rates


@pytest.mark.parametrize(
    "model, batch, error, message",
    [
        (nn.Linear(3, 3), torch.ones(1, 3), ValueError, "must contain BatchNorm .* got a Linear"),
        ("net", torch.ones(1, 3), TypeError, "model must be a torch.nn.Module, got str"),
        (conv_bn(), [[1.0]], TypeError, "must be a torch.Tensor, got list"),
    ],
)
def test_bad_input_is_refused(model, batch, error, message):
    for calibrate in (set_batchnorm_statistics, calibrate_batchnorm):
        with pytest.raises(error, match=message):
            calibrate(model, batch)


def test_a_failing_pass_gives_the_batchnorms_their_statistics_back():
    model = conv_bn()
    model[1].running_mean.fill_(0.5)
    before = {name: value.clone() for name, value in model[1].state_dict().items()}
    with pytest.raises(RuntimeError):
        set_batchnorm_statistics(model, torch.ones(1, 5, 8, 8))  # 5 channels for a 3-channel conv
    after = model[1].state_dict()
    assert all(torch.equal(before[name], after[name]) for name in before)
    assert model[1].momentum == 0.1
