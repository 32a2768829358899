"""A NaN membrane shows up downstream, as ``relu(nan)`` does: NaN spikes, NaN gradients.

``NaN >= v_threshold`` is False, so a plain threshold would silence a NaN membrane and let the
corruption vanish. Every backend instead spikes NaN at that neuron, from that step on (the
membrane stays NaN), and the gradients through it are NaN; the other neurons are untouched.
"""

from __future__ import annotations

import pytest
import torch

from spikezoo.neurons import MultiStepIF, MultiStepLIF, MultiStepPLIF

NAN = float("nan")
NEURONS = {
    "lif": lambda **kw: MultiStepLIF(tau=3.0, **kw),
    "plif": lambda **kw: MultiStepPLIF(init_tau=3.0, **kw),
    "if": lambda **kw: MultiStepIF(**kw),
}
EAGER_CASES = [
    (kind, v_reset, torch.float64)
    for kind in NEURONS
    for v_reset in (0.0, None)  # hard and soft reset
] + [("lif", 0.0, torch.bfloat16), ("plif", None, torch.float32)]
BACKEND_CASES = [("torch", *case) for case in EAGER_CASES] + [
    # each configuration compiles graphs of its own (seconds): the slow step checks them
    pytest.param("inductor", "lif", 0.0, torch.float32, marks=pytest.mark.slow),
    pytest.param("inductor", "plif", None, torch.float64, marks=pytest.mark.slow),
]


def _input(dtype: torch.dtype) -> torch.Tensor:
    """``[T=6, 2, 3]``: neurons fire now and then (dyadic values, exact in every dtype)."""
    steps = torch.tensor([1.5, 0.25, 2.0, -0.5, 1.25, 3.0])
    return (steps[:, None, None] * torch.tensor([1.0, 0.75, 1.5])).expand(6, 2, 3).to(dtype)


@pytest.mark.parametrize("backend,kind,v_reset,dtype", BACKEND_CASES)
def test_nan_input_spikes_nan_from_then_on_and_its_gradient_is_nan(backend, kind, v_reset, dtype):
    neuron = NEURONS[kind](v_reset=v_reset, backend=backend).to(dtype)
    clean = _input(dtype)
    dirty = clean.clone()
    dirty[2, 1, 0] = NAN  # one neuron, from step 2
    nan_neuron = torch.zeros(2, 3, dtype=torch.bool)
    nan_neuron[1, 0] = True

    results = []
    for x in (clean, dirty):
        leaf = x.clone().requires_grad_()
        spikes = neuron(leaf)
        spikes.sum().backward()
        grad_w = neuron.w.grad.clone() if kind == "plif" else None
        neuron.zero_grad()
        results.append((spikes.detach(), leaf.grad, grad_w))
    (spikes_clean, grad_clean, _), (spikes, grad, grad_w) = results

    assert spikes.dtype == dtype
    assert spikes[:2, nan_neuron].isfinite().all()  # before the NaN arrives: normal spikes
    assert spikes[2:, nan_neuron].isnan().all()  # from then on: NaN, every step
    assert torch.equal(spikes[:, ~nan_neuron], spikes_clean[:, ~nan_neuron])
    assert grad[:, nan_neuron].isnan().all()  # BPTT carries the NaN back to every step
    assert torch.equal(grad[:, ~nan_neuron], grad_clean[:, ~nan_neuron])
    if kind == "plif":
        assert grad_w.isnan()  # the shared decay saw the NaN neuron


@pytest.mark.parametrize("kind", list(NEURONS))
def test_nan_v_init_spikes_nan_and_the_final_membrane_is_nan(kind):
    x = _input(torch.float64)
    v_init = torch.zeros(2, 3, dtype=torch.float64)
    v_init[0, 2] = NAN
    spikes, v_final = NEURONS[kind](backend="torch").double()(x, v_init, return_state=True)
    assert spikes[:, 0, 2].isnan().all()
    assert v_final[0, 2].isnan() and v_final.isnan().sum() == 1
    assert spikes.isnan().sum() == x.shape[0]


def test_a_nan_pixel_reaches_the_loss_through_a_neuron_layer():
    """conv -> LIF -> linear: the NaN is in the loss, not silently dropped by the threshold."""
    torch.manual_seed(0)
    conv, head = torch.nn.Conv2d(1, 4, 3, padding=1), torch.nn.Linear(4 * 8 * 8, 2)
    lif = MultiStepLIF(backend="torch")
    images = torch.rand(2, 3, 1, 8, 8)  # [T, B, C, H, W]
    images[0, 1, 0, 4, 4] = NAN
    membrane = conv(images.flatten(0, 1)).unflatten(0, (2, 3))
    logits = head(lif(membrane).flatten(2))  # [T, B, classes]
    assert logits[:, 1].isnan().all()  # the sample with the NaN pixel, at every step
    assert logits[:, [0, 2]].isfinite().all()  # the others are untouched
    logits.sum().backward()
    assert conv.weight.grad.isnan().any()
