"""Clear errors for bad inputs and arguments; the surrogate registry."""

from __future__ import annotations

import math

import pytest
import torch

from spikezoo.neurons import (
    BACKENDS,
    MultiStepIF,
    MultiStepLIF,
    MultiStepPLIF,
    get_surrogate,
    multistep_if,
    multistep_lif,
    multistep_neuron,
    multistep_plif,
    register_surrogate,
    surrogate_names,
)
from spikezoo.neurons import surrogate as surrogate_module

NEURONS = {
    "lif": lambda **kw: MultiStepLIF(**{"backend": "torch", **kw}),
    "plif": lambda **kw: MultiStepPLIF(**{"backend": "torch", **kw}),
    "if": lambda **kw: MultiStepIF(**{"backend": "torch", **kw}),
}
FUNCTIONALS = {
    "lif": lambda x, **kw: multistep_lif(x, **{"backend": "torch", **kw}),
    "plif": lambda x, **kw: multistep_plif(x, torch.zeros(()), **{"backend": "torch", **kw}),
    "if": lambda x, **kw: multistep_if(x, **{"backend": "torch", **kw}),
}
ALL = pytest.mark.parametrize("kind", ["lif", "plif", "if"])


@ALL
@pytest.mark.parametrize("shape", [(), (5,)])
def test_input_needs_time_and_neuron_dims(kind, shape):
    x = torch.ones(shape)
    with pytest.raises(ValueError, match=r"\[T, \.\.\.\].*at least 2 dims.*shape \("):
        NEURONS[kind]()(x)
    with pytest.raises(ValueError, match="at least 2 dims"):
        FUNCTIONALS[kind](x)


@ALL
@pytest.mark.parametrize("dtype", [torch.int64, torch.int32, torch.bool, torch.complex64])
def test_input_must_be_floating_point(kind, dtype):
    x = torch.ones(3, 2, dtype=dtype)
    with pytest.raises(TypeError, match=f"floating-point.*{dtype}"):
        NEURONS[kind]()(x)


def test_input_must_be_a_tensor():
    with pytest.raises(TypeError, match=r"torch\.Tensor.*list"):
        MultiStepLIF(backend="torch")([[1.0, 2.0]])


@ALL
def test_zero_time_steps(kind):
    with pytest.raises(ValueError, match=r"at least one time step.*\(0, 3\)"):
        NEURONS[kind]()(torch.ones(0, 3))


@pytest.mark.parametrize("tau", [1.0, 0.5, 0.0, -2.0, math.nan])
def test_lif_tau_must_exceed_one(tau):
    with pytest.raises(ValueError, match=r"tau must be > 1"):
        MultiStepLIF(tau=tau)
    with pytest.raises(ValueError, match=r"tau must be > 1"):
        multistep_lif(torch.ones(2, 3), tau=tau, backend="torch")


@pytest.mark.parametrize("init_tau", [1.0, 0.9, -1.0, math.nan])
def test_plif_init_tau_must_exceed_one(init_tau):
    with pytest.raises(ValueError, match=r"init_tau must be > 1.*got"):
        MultiStepPLIF(init_tau=init_tau)


def test_plif_w_must_be_a_one_element_tensor():
    x = torch.ones(2, 3)
    with pytest.raises(ValueError, match="w must be a one-element tensor"):
        multistep_plif(x, torch.zeros(2), backend="torch")
    with pytest.raises(ValueError, match="w must be a one-element tensor"):
        multistep_plif(x, 0.0, backend="torch")


@ALL
def test_unknown_surrogate_lists_the_known_ones(kind):
    pattern = r"unknown surrogate 'rectangle'.*'atan'.*'sigmoid'"
    with pytest.raises(ValueError, match=pattern):
        NEURONS[kind](surrogate="rectangle")
    with pytest.raises(ValueError, match=pattern):
        FUNCTIONALS[kind](torch.ones(2, 3), surrogate="rectangle")
    with pytest.raises(ValueError, match=pattern):
        get_surrogate("rectangle")


@ALL
def test_unknown_backend(kind):
    pattern = r"unknown backend 'triton'.*'auto'.*'inductor'.*'torch'"
    with pytest.raises(ValueError, match=pattern):
        NEURONS[kind](backend="triton")
    with pytest.raises(ValueError, match=pattern):
        FUNCTIONALS[kind](torch.ones(2, 3), backend="triton")
    with pytest.raises(ValueError, match=pattern):
        multistep_neuron(torch.ones(2, 3), decay=0.5, backend="triton")


def test_backends_constant():
    assert {"auto", "torch", "inductor"} <= set(BACKENDS)


@ALL
@pytest.mark.parametrize("v_shape", [(3,), (1, 4), (4, 3), (2, 3, 4), ()])
def test_v_init_must_have_the_shape_of_one_step(kind, v_shape):
    x = torch.ones(5, 3, 4)
    pattern = r"v_init must have the shape of one time step, \(3, 4\), got \("
    with pytest.raises(ValueError, match=pattern):
        NEURONS[kind]()(x, v_init=torch.zeros(v_shape))
    with pytest.raises(ValueError, match=pattern):
        FUNCTIONALS[kind](x, v_init=torch.zeros(v_shape))


@pytest.fixture
def registry(monkeypatch):
    """A private copy of the surrogate registry, restored after the test."""
    monkeypatch.setattr(surrogate_module, "_REGISTRY", dict(surrogate_module._REGISTRY))


def _triangle(u, alpha):
    return torch.clamp(alpha - alpha * alpha * u.abs(), min=0.0)


@pytest.mark.usefixtures("registry")
def test_registered_surrogate_is_used_in_backward():
    registered = register_surrogate("triangle", _triangle, default_alpha=0.8)
    assert registered.name == "triangle" and registered.default_alpha == 0.8
    assert "triangle" in surrogate_names()
    assert get_surrogate("triangle").grad is _triangle

    x = torch.tensor([[0.5, 1.0, 1.6, 8.0, -1.0]], dtype=torch.float64, requires_grad=True)
    # T=1 from rest: h = x / tau = x / 2, u = h - 1, dS/dx = triangle(u) / 2.
    spikes = MultiStepLIF(surrogate="triangle", backend="torch")(x)
    spikes.sum().backward()
    u = x.detach() / 2 - 1
    torch.testing.assert_close(x.grad, _triangle(u, 0.8) / 2, rtol=1e-12, atol=0)
    assert x.grad[0, 2] > 0 and x.grad[0, 3] == 0  # nonzero near threshold, zero far away

    x.grad = None
    multistep_if(x, surrogate="triangle", alpha=0.25, backend="torch").sum().backward()
    torch.testing.assert_close(x.grad, _triangle(x.detach() - 1, 0.25), rtol=1e-12, atol=0)


@pytest.mark.usefixtures("registry")
def test_registered_surrogate_default_alpha_shows_in_repr():
    register_surrogate("triangle", _triangle, default_alpha=0.8)
    assert "surrogate=triangle(alpha=0.8)" in repr(MultiStepIF(surrogate="triangle"))


@pytest.mark.usefixtures("registry")
def test_re_registering_a_name_raises():
    register_surrogate("triangle", _triangle, default_alpha=1.0)
    with pytest.raises(ValueError, match="surrogate 'triangle' is already registered"):
        register_surrogate("triangle", _triangle, default_alpha=2.0)
    assert get_surrogate("triangle").default_alpha == 1.0  # the first registration stands
    with pytest.raises(ValueError, match="surrogate 'sigmoid' is already registered"):
        register_surrogate("sigmoid", _triangle, default_alpha=1.0)
    assert get_surrogate("sigmoid").grad is not _triangle


def test_registry_fixture_leaves_no_trace():
    assert {"atan", "sigmoid"} <= set(surrogate_names())
    assert "triangle" not in surrogate_names()


INF, NAN = math.inf, math.nan


@ALL
@pytest.mark.parametrize(
    "kwargs,pattern",
    [
        ({"alpha": 0.0}, r"alpha \(the surrogate's sharpness\) must be finite and > 0, got 0\.0"),
        ({"alpha": -2.0}, r"alpha .*must be finite and > 0, got -2\.0"),
        ({"alpha": NAN}, r"alpha .*must be finite and > 0, got nan"),
        ({"alpha": INF}, r"alpha .*must be finite and > 0, got inf"),
        ({"v_threshold": 0.0}, r"v_threshold must be greater than v_reset, got v_threshold=0\.0 "),
        (
            {"v_threshold": -1.0, "v_reset": -0.5},
            r"v_threshold=-1\.0 and v_reset=-0\.5.*zero input",
        ),
        ({"v_threshold": 0.0, "v_reset": None}, r"v_threshold must be > 0 with soft reset"),
        ({"v_threshold": NAN}, r"v_threshold must be finite, got nan"),
        ({"v_threshold": INF}, r"v_threshold must be finite, got inf"),
        ({"v_reset": -INF}, r"v_reset must be finite, got -inf"),
    ],
)
def test_arguments_that_would_give_garbage_raise_value_error(kind, kwargs, pattern):
    with pytest.raises(ValueError, match=pattern):
        NEURONS[kind](**kwargs)
    with pytest.raises(ValueError, match=pattern):
        FUNCTIONALS[kind](torch.ones(2, 3), **kwargs)


@ALL
@pytest.mark.parametrize(
    "kwargs,pattern",
    [
        ({"v_threshold": "1"}, r"v_threshold must be a real number, got str '1'"),
        ({"v_reset": [0.0]}, r"v_reset must be a real number, got list \[0\.0\]"),
        ({"alpha": True}, r"alpha must be a real number, got bool True"),
        ({"detach_reset": "no"}, r"detach_reset must be True or False, got str 'no'"),
    ],
)
def test_arguments_of_the_wrong_type_raise_type_error(kind, kwargs, pattern):
    with pytest.raises(TypeError, match=pattern):
        NEURONS[kind](**kwargs)
    with pytest.raises(TypeError, match=pattern):
        FUNCTIONALS[kind](torch.ones(2, 3), **kwargs)


@pytest.mark.parametrize("kind", ["lif", "plif"])
def test_decay_input_must_be_a_bool(kind):
    with pytest.raises(TypeError, match=r"decay_input must be True or False, got int 0"):
        NEURONS[kind](decay_input=0)
    with pytest.raises(TypeError, match=r"decay_input must be True or False, got int 0"):
        FUNCTIONALS[kind](torch.ones(2, 3), decay_input=0)


def test_return_state_must_be_a_bool():
    with pytest.raises(TypeError, match=r"return_state must be True or False, got str 'yes'"):
        MultiStepLIF(backend="torch")(torch.ones(2, 3), return_state="yes")


@pytest.mark.parametrize("tau", [INF, NAN])
def test_lif_tau_must_be_finite(tau):
    pattern = rf"tau must be > 1 and finite \(the membrane decays by 1/tau per step\), got {tau}"
    with pytest.raises(ValueError, match=pattern):
        MultiStepLIF(tau=tau)
    with pytest.raises(ValueError, match=pattern):
        multistep_lif(torch.ones(2, 3), tau=tau, backend="torch")
    with pytest.raises(ValueError, match=pattern.replace("tau must", "init_tau must")):
        MultiStepPLIF(init_tau=tau)


def test_tau_must_be_a_number():
    with pytest.raises(TypeError, match=r"tau must be a real number, got str '2'"):
        MultiStepLIF(tau="2")


@pytest.mark.parametrize("decay", [0.0, 1.0, 1.5, -0.5, NAN, INF])
def test_multistep_neuron_decay_must_be_in_the_open_unit_interval(decay):
    with pytest.raises(ValueError, match=rf"decay must be in \(0, 1\).*got {decay}"):
        multistep_neuron(torch.ones(2, 3), decay=decay, backend="torch")


@ALL
@pytest.mark.parametrize(
    "v_init,shown",
    [(0.5, r"float 0\.5"), ([0.0, 0.0, 0.0], r"list \[0\.0, 0\.0, 0\.0\]"), ("v", "str 'v'")],
)
def test_v_init_that_is_not_a_tensor_raises_type_error(kind, v_init, shown):
    pattern = (
        rf"v_init must be a torch\.Tensor of shape \(3,\) \(one time step of x\) or None, "
        rf"got {shown}"
    )
    with pytest.raises(TypeError, match=pattern):
        NEURONS[kind]()(torch.ones(2, 3), v_init=v_init)
    with pytest.raises(TypeError, match=pattern):
        FUNCTIONALS[kind](torch.ones(2, 3), v_init=v_init)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_v_init_on_another_device_names_both_devices():
    with pytest.raises(ValueError, match=r"v_init must be on the device of x, cpu, got cuda"):
        MultiStepLIF(backend="torch")(torch.ones(2, 3), v_init=torch.zeros(3, device="cuda"))


@pytest.mark.usefixtures("registry")
@pytest.mark.parametrize("default_alpha", [0.0, -1.0, NAN, INF])
def test_registering_a_surrogate_with_a_bad_default_alpha_raises(default_alpha):
    with pytest.raises(
        ValueError, match=rf"default_alpha must be finite and > 0, got {default_alpha}"
    ):
        register_surrogate("triangle", _triangle, default_alpha=default_alpha)
    assert "triangle" not in surrogate_names()


@ALL
def test_attributes_changed_after_construction_are_checked_at_call_time(kind):
    neuron = NEURONS[kind]()
    neuron.alpha = -1.0
    with pytest.raises(ValueError, match=r"alpha .*must be finite and > 0, got -1\.0"):
        neuron(torch.ones(2, 3))
