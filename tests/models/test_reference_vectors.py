"""The models reproduce the authors' code number for number (float64 reference vectors)."""

import pytest
import torch

from spikezoo.models._registry import family_of
from tests.reference import CASES, load_case

TOLERANCE = dict(rtol=1e-6, atol=1e-9)


def _loaded(case):
    model = case.build()
    model.load_state_dict(family_of(model).checkpoint_filter_fn(case.state, model))
    return model


@pytest.mark.parametrize("name", CASES)
def test_eval_logits(name):
    case = load_case(name)
    model = _loaded(case).eval()
    with torch.no_grad():
        logits = model(case.tensors["input"])
    torch.testing.assert_close(logits, case.tensors["logits_eval"], **TOLERANCE)


@pytest.mark.parametrize("name", CASES)
def test_train_logits_and_every_gradient(name):
    case = load_case(name)
    model = _loaded(case).train()
    logits = model(case.tensors["input"])
    if isinstance(logits, tuple):  # Meta-SpikeFormer's kd: (head, head_kd) in training
        logits = torch.stack(logits)
    torch.testing.assert_close(logits, case.tensors["logits_train"], **TOLERANCE)

    (logits * case.tensors["probe"]).sum().backward()
    expected = family_of(model).remap_state_dict(case.grads, model)
    params = dict(model.named_parameters())
    assert expected.keys() == params.keys(), "every parameter, and only those, takes part"
    for key, grad in expected.items():
        atol = case.gradient_atol(key, expected)
        torch.testing.assert_close(params[key].grad, grad, rtol=1e-6, atol=atol, msg=key)


@pytest.mark.parametrize("name", [c for c in CASES if c.startswith("resformer")])
def test_dssa_rates_follow_the_ema_after_a_training_step(name):
    case = load_case(name)
    model = _loaded(case).train()
    before = {k: v.clone() for k, v in model.state_dict().items() if "firing_rate" in k}
    model(case.tensors["input"])
    after = model.state_dict()
    for key, old in before.items():
        assert not torch.equal(after[key], old), f"{key} was not updated in training mode"
        # one EMA step moves the rate by at most 0.1% of the distance to a rate in [0, 1]
        assert (after[key] - old).abs().max() <= 1e-3 * max(1.0, old.abs().max().item())
