"""Property-based tests of the multi-step neuron dynamics (eager ``backend="torch"``, float64).

The properties follow from the documented dynamics (see ``spikezoo.neurons.functional``)::

    h[t] = v[t-1] + (x[t] - (v[t-1] - v_reset)) * k     leaky, decay_input=True
    h[t] = v[t-1] - (v[t-1] - v_reset) * k + x[t]       leaky, decay_input=False
    h[t] = v[t-1] + x[t]                                IF
    s[t] = h[t] >= v_threshold
    v[t] = v_reset if s[t] else h[t]   (hard)   |   v[t] = h[t] - s[t] * v_threshold   (soft)

with the leak pulling towards 0 under soft reset.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from spikezoo.neurons import (
    MultiStepIF,
    MultiStepLIF,
    MultiStepPLIF,
    multistep_if,
    multistep_lif,
    multistep_plif,
)

# The same examples on every run and machine: a failure is reproducible, never a lottery.
SETTINGS = settings(max_examples=40, deadline=None, derandomize=True, database=None)


@dataclass(frozen=True)
class Config:
    kind: str  # "lif", "plif" or "if"
    tau: float  # LIF tau; PLIF uses w = -ln(tau - 1), so sigmoid(w) ~ 1/tau
    v_threshold: float
    v_reset: float | None
    decay_input: bool
    surrogate: str
    alpha: float | None
    detach_reset: bool

    @property
    def rest(self) -> float:
        return 0.0 if self.v_reset is None else self.v_reset

    def w(self) -> torch.Tensor:
        return torch.tensor(-math.log(self.tau - 1.0), dtype=torch.float64, requires_grad=True)

    def k(self, w: torch.Tensor | None) -> float:
        """The per-step leak k (0 for IF)."""
        if self.kind == "if":
            return 0.0
        if self.kind == "plif":
            return torch.sigmoid(w.detach()).item()
        return 1.0 / self.tau


def run(cfg: Config, x, w=None, **kwargs):
    """Run the functional form of ``cfg`` over ``x`` on the eager backend."""
    common = dict(
        v_threshold=cfg.v_threshold,
        v_reset=cfg.v_reset,
        surrogate=cfg.surrogate,
        alpha=cfg.alpha,
        detach_reset=cfg.detach_reset,
        backend="torch",
        **kwargs,
    )
    if cfg.kind == "lif":
        return multistep_lif(x, cfg.tau, decay_input=cfg.decay_input, **common)
    if cfg.kind == "plif":
        return multistep_plif(x, w, decay_input=cfg.decay_input, **common)
    return multistep_if(x, **common)


def surrogate_grad(name: str, alpha: float | None, u: torch.Tensor) -> torch.Tensor:
    """dS/du of the built-in surrogates, written out independently of spikezoo."""
    if name == "sigmoid":
        alpha = 4.0 if alpha is None else alpha
        sig = torch.sigmoid(alpha * u)
        return alpha * sig * (1.0 - sig)
    alpha = 2.0 if alpha is None else alpha
    return alpha / 2.0 / (1.0 + (math.pi / 2.0 * alpha * u) ** 2)


configs = st.builds(
    Config,
    kind=st.sampled_from(["lif", "plif", "if"]),
    tau=st.floats(1.1, 8.0),
    v_threshold=st.floats(0.25, 2.0),
    v_reset=st.sampled_from([0.0, None, -0.5]),
    decay_input=st.booleans(),
    surrogate=st.sampled_from(["sigmoid", "atan"]),
    alpha=st.sampled_from([None, 1.5, 5.0]),
    detach_reset=st.booleans(),
)


@st.composite
def sequences(draw, min_t=1, max_t=8, lo=-3.0, hi=3.0, max_dims=3, elements=None):
    """A float64 tensor [T, ...] with 1 to ``max_dims`` dims after time."""
    t = draw(st.integers(min_t, max_t))
    rest = draw(st.lists(st.integers(1, 4), min_size=1, max_size=max_dims))
    if elements is None:
        elements = st.floats(lo, hi, allow_nan=False, allow_infinity=False, width=64)
    arr = draw(hnp.arrays(np.float64, (t, *rest), elements=elements))
    return torch.from_numpy(arr)


# Far from the subnormal range, where rounding does not commute with scaling by powers of two.
normal_floats = st.one_of(st.just(0.0), st.floats(1e-100, 3.0), st.floats(-3.0, -1e-100))


def _charge(cfg: Config, k: float, v: float, x: float) -> float:
    if cfg.kind == "if":
        return v + x
    if cfg.decay_input:
        return v + (x - (v - cfg.rest)) * k
    return v - (v - cfg.rest) * k + x


@given(cfg=configs, x=sequences(min_t=1, max_t=1), data=st.data())
@SETTINGS
def test_single_step_is_one_charge_fire_reset(cfg, x, data):
    """T=1: one charge from v_init, fire iff h >= threshold, reset; gradient = surrogate * dh/dx."""
    w = cfg.w() if cfg.kind == "plif" else None
    k = cfg.k(w)
    given_v = data.draw(st.booleans())
    v_init = torch.full(x.shape[1:], 0.3, dtype=torch.float64) if given_v else None
    x = x.clone().requires_grad_()
    spikes, v_final = run(cfg, x, w, v_init=v_init, return_state=True)

    v0 = 0.3 if given_v else cfg.rest
    h = [_charge(cfg, k, v0, xi) for xi in x.detach()[0].flatten().tolist()]
    h = torch.tensor(h, dtype=torch.float64).reshape(x.shape[1:])
    fired = h >= cfg.v_threshold
    torch.testing.assert_close(spikes[0], fired.double(), rtol=0, atol=0)
    if cfg.v_reset is None:
        expected_v = h - fired.double() * cfg.v_threshold
    else:
        expected_v = torch.where(fired, cfg.v_reset, h)
    torch.testing.assert_close(v_final, expected_v, rtol=1e-12, atol=1e-12)

    spikes.sum().backward()
    dh_dx = k if (cfg.kind != "if" and cfg.decay_input) else 1.0
    expected_grad = surrogate_grad(cfg.surrogate, cfg.alpha, h - cfg.v_threshold) * dh_dx
    torch.testing.assert_close(x.grad[0], expected_grad, rtol=1e-10, atol=1e-14)


@given(cfg=configs, x=sequences())
@SETTINGS
def test_spikes_are_binary_and_shaped_like_the_input(cfg, x):
    w = cfg.w() if cfg.kind == "plif" else None
    spikes, v_final = run(cfg, x, w, return_state=True)
    assert spikes.shape == x.shape
    assert spikes.dtype == x.dtype
    assert v_final.shape == x.shape[1:]
    assert v_final.dtype == x.dtype
    assert ((spikes == 0) | (spikes == 1)).all()
    assert torch.isfinite(v_final).all()


@given(cfg=configs, t=st.integers(1, 10), n=st.integers(1, 6))
@SETTINGS
def test_zero_input_never_fires_and_stays_at_rest(cfg, t, n):
    w = cfg.w() if cfg.kind == "plif" else None
    x = torch.zeros(t, n, dtype=torch.float64, requires_grad=True)
    spikes, v_final = run(cfg, x, w, return_state=True)
    assert not spikes.any()
    assert torch.equal(v_final, torch.full((n,), cfg.rest, dtype=torch.float64))
    spikes.sum().backward()
    assert torch.isfinite(x.grad).all()


@given(cfg=configs, x=sequences(lo=1e6, hi=1e9))
@SETTINGS
def test_huge_input_fires_every_step(cfg, x):
    w = cfg.w() if cfg.kind == "plif" else None
    spikes = run(cfg, x, w)
    assert spikes.all()


@given(cfg=configs, x=sequences(lo=-1e9, hi=-1e6))
@SETTINGS
def test_huge_negative_input_never_fires(cfg, x):
    w = cfg.w() if cfg.kind == "plif" else None
    assert not run(cfg, x, w).any()


@given(cfg=configs, x=sequences(min_t=2, max_t=10), data=st.data())
@SETTINGS
def test_chunked_run_with_state_equals_whole_run(cfg, x, data):
    """Feeding a sequence in chunks, carrying ``v`` via v_init/return_state, changes nothing:
    the spikes, the final membrane, and the gradients (which flow back through v_init)."""
    t = x.shape[0]
    cuts = sorted(data.draw(st.sets(st.integers(1, t - 1), min_size=1, max_size=t - 1)))
    gen = torch.Generator().manual_seed(0)
    grad_spikes = torch.randn(x.shape, dtype=torch.float64, generator=gen)
    grad_v = torch.randn(x.shape[1:], dtype=torch.float64, generator=gen)

    w_whole = cfg.w() if cfg.kind == "plif" else None
    x_whole = x.clone().requires_grad_()
    spikes, v_final = run(cfg, x_whole, w_whole, return_state=True)
    ((spikes * grad_spikes).sum() + (v_final * grad_v).sum()).backward()

    w_chunks = cfg.w() if cfg.kind == "plif" else None
    x_chunks = x.clone().requires_grad_()
    v, pieces = None, []
    for lo, hi in zip([0, *cuts], [*cuts, t], strict=True):
        piece, v = run(cfg, x_chunks[lo:hi], w_chunks, v_init=v, return_state=True)
        pieces.append(piece)
    chunked = torch.cat(pieces)
    ((chunked * grad_spikes).sum() + (v * grad_v).sum()).backward()

    assert torch.equal(chunked, spikes)
    assert torch.equal(v, v_final)
    torch.testing.assert_close(x_chunks.grad, x_whole.grad, rtol=1e-12, atol=1e-14)
    if cfg.kind == "plif":
        torch.testing.assert_close(w_chunks.grad, w_whole.grad, rtol=1e-10, atol=1e-14)


@given(cfg=configs, x=sequences(min_t=1, max_t=6))
@SETTINGS
def test_gradient_flows_into_v_init(cfg, x):
    """v_init enters only through h[0], next to x[0]: dL/dv_init = dL/dx[0] * (dh/dv) / (dh/dx),
    i.e. (1 - k) / k (leaky, decay_input), 1 - k (leaky, no decay_input), 1 (IF)."""
    w = cfg.w() if cfg.kind == "plif" else None
    k = cfg.k(w)
    x = x.clone().requires_grad_()
    v_init = torch.full(x.shape[1:], cfg.rest + 0.1, dtype=torch.float64, requires_grad=True)
    spikes, v_final = run(cfg, x, w, v_init=v_init, return_state=True)
    grad_spikes = torch.linspace(-1, 1, spikes.numel(), dtype=torch.float64).reshape(x.shape)
    ((spikes * grad_spikes).sum() + v_final.sum()).backward()

    assert v_init.grad is not None and v_init.grad.shape == v_init.shape
    if cfg.kind == "if":
        ratio = 1.0
    elif cfg.decay_input:
        ratio = (1.0 - k) / k
    else:
        ratio = 1.0 - k
    torch.testing.assert_close(v_init.grad, x.grad[0] * ratio, rtol=1e-9, atol=1e-12)
    # The surrogates never vanish exactly at these magnitudes, so something must flow.
    assert v_init.grad.abs().sum() > 0


@given(cfg=configs, x=sequences(min_t=2, max_t=8), data=st.data())
@SETTINGS
def test_causality(cfg, x, data):
    """Spikes at t depend on inputs up to t only, forward and backward."""
    w = cfg.w() if cfg.kind == "plif" else None
    t = data.draw(st.integers(1, x.shape[0] - 1))
    x = x.clone().requires_grad_()
    spikes = run(cfg, x, w)
    assert torch.equal(run(cfg, x.detach()[:t], w), spikes[:t].detach())
    spikes[:t].sum().backward()
    assert not x.grad[t:].any()


@given(cfg=configs, x=sequences(min_t=1, max_t=6, max_dims=1), data=st.data())
@SETTINGS
def test_neurons_are_independent(cfg, x, data):
    """Permuting the neurons permutes the spikes; each neuron sees only its own input."""
    w = cfg.w() if cfg.kind == "plif" else None
    perm = torch.tensor(data.draw(st.permutations(range(x.shape[1]))), dtype=torch.long)
    spikes, v_final = run(cfg, x, w, return_state=True)
    spikes_p, v_final_p = run(cfg, x[:, perm], w, return_state=True)
    assert torch.equal(spikes_p, spikes[:, perm])
    assert torch.equal(v_final_p, v_final[perm])


# Inputs on a coarse dyadic grid with k in {1/2, 1/4} keep every operation exact in float64,
# so the spikes equal a plain-Python evaluation of the equations whatever the order of the
# operations, including the threshold ties, which the grid makes frequent (h == v_threshold fires).
grid = st.integers(-24, 24).map(lambda i: i / 8)
exact_configs = st.builds(
    Config,
    kind=st.sampled_from(["lif", "plif", "if"]),
    tau=st.sampled_from([2.0, 4.0]),
    v_threshold=st.sampled_from([0.5, 1.0, 1.25]),
    v_reset=st.sampled_from([0.0, None, -0.5]),
    decay_input=st.booleans(),
    surrogate=st.just("sigmoid"),
    alpha=st.just(None),
    detach_reset=st.just(True),
)


@given(
    cfg=exact_configs,
    xs=st.lists(st.lists(grid, min_size=3, max_size=3), min_size=1, max_size=8),
)
@SETTINGS
def test_exact_dynamics_on_a_dyadic_grid(cfg, xs):
    if cfg.kind == "plif":
        cfg = replace(cfg, tau=2.0)  # w = 0: sigmoid(0) = 1/2 exactly
    w = cfg.w() if cfg.kind == "plif" else None
    k = cfg.k(w)
    assert k in (0.0, 0.5, 0.25)
    x = torch.tensor(xs, dtype=torch.float64)
    spikes, v_final = run(cfg, x, w, return_state=True)

    expected_spikes, v = [], [cfg.rest] * x.shape[1]
    for row in xs:
        h = [_charge(cfg, k, vi, xi) for vi, xi in zip(v, row, strict=True)]
        s = [1.0 if hi >= cfg.v_threshold else 0.0 for hi in h]
        if cfg.v_reset is None:
            v = [hi - si * cfg.v_threshold for hi, si in zip(h, s, strict=True)]
        else:
            v = [cfg.v_reset if si else hi for hi, si in zip(h, s, strict=True)]
        expected_spikes.append(s)
    assert spikes.tolist() == expected_spikes
    assert v_final.tolist() == v


def test_threshold_tie_fires():
    """``>=``: a membrane exactly at threshold fires (IF: 0.5 + 0.5 == 1.0)."""
    x = torch.tensor([[0.5], [0.5], [0.25]], dtype=torch.float64)
    assert multistep_if(x, backend="torch").flatten().tolist() == [0.0, 1.0, 0.0]


@given(cfg=configs, x=sequences(elements=normal_floats), shift=st.integers(1, 6))
@SETTINGS
def test_power_of_two_scaling_equivariance(cfg, x, shift):
    """Scaling input, threshold and reset by 2**n scales every intermediate exactly."""
    w = cfg.w() if cfg.kind == "plif" else None
    scale = float(2**shift)
    scaled = replace(
        cfg,
        v_threshold=cfg.v_threshold * scale,
        v_reset=None if cfg.v_reset is None else cfg.v_reset * scale,
    )
    spikes, v_final = run(cfg, x, w, return_state=True)
    spikes_s, v_final_s = run(scaled, x * scale, w, return_state=True)
    assert torch.equal(spikes_s, spikes)
    assert torch.equal(v_final_s, v_final * scale)


# Derived strategies (mapped, not filtered: heavy filtering fails Hypothesis' health checks).
hard_reset_configs = st.builds(replace, configs, v_reset=st.sampled_from([0.0, -0.5, 0.2]))
soft_if_configs = configs.map(lambda c: replace(c, kind="if", v_reset=None))


@given(cfg=hard_reset_configs, x=sequences(lo=-50.0, hi=50.0))
@SETTINGS
def test_hard_reset_keeps_membrane_below_threshold(cfg, x):
    w = cfg.w() if cfg.kind == "plif" else None
    _, v_final = run(cfg, x, w, return_state=True)
    assert (v_final < cfg.v_threshold).all()


@given(cfg=soft_if_configs, x=sequences())
@SETTINGS
def test_soft_reset_if_conserves_charge(cfg, x):
    """IF with soft reset: v_final = v_init + sum(x) - v_threshold * number of spikes."""
    v_init = torch.full(x.shape[1:], 0.2, dtype=torch.float64)
    spikes, v_final = run(cfg, x, v_init=v_init, return_state=True)
    expected = v_init + x.sum(0) - cfg.v_threshold * spikes.sum(0)
    torch.testing.assert_close(v_final, expected, rtol=1e-9, atol=1e-9)


@given(cfg=soft_if_configs, data=st.data())
@SETTINGS
def test_soft_reset_keeps_membrane_in_range_for_subthreshold_inputs(cfg, data):
    """IF, soft reset, 0 <= x <= v_threshold / 2: v stays in [0, v_threshold) and the spike
    count is the number of whole thresholds integrated."""
    half = cfg.v_threshold / 2
    x = torch.from_numpy(
        data.draw(
            hnp.arrays(np.float64, (data.draw(st.integers(1, 10)), 4), elements=st.floats(0, half))
        )
    )
    spikes, v_final = run(cfg, x, return_state=True)
    assert (v_final >= 0).all() and (v_final < cfg.v_threshold).all()
    count = spikes.sum(0)
    total = x.sum(0)
    assert (count * cfg.v_threshold <= total + 1e-9).all()
    assert (total < (count + 1) * cfg.v_threshold + 1e-9).all()


@pytest.mark.parametrize("detach_reset,expected", [(True, [0.0, 0.0, 1.0]), (False, None)])
def test_a_threshold_tie_is_a_spike_in_the_backward_pass_too(detach_reset, expected):
    """IF, hard reset at 0: h[1] = 0.5 + 0.5 == 1 fires and resets, so with a detached reset
    no gradient of v_final reaches x[0] or x[1]; with an attached one, some does."""
    x = torch.tensor([[0.5], [0.5], [0.25]], dtype=torch.float64, requires_grad=True)
    spikes, v_final = multistep_if(x, detach_reset=detach_reset, return_state=True, backend="torch")
    assert spikes.flatten().tolist() == [0.0, 1.0, 0.0]
    assert v_final.item() == 0.25
    v_final.sum().backward()
    if expected is not None:
        assert x.grad.flatten().tolist() == expected
    else:
        # Attached: dv/dh = [h < threshold] + (v_reset - h) * surrogate'(h - threshold) at
        # every step, so dv[1]/dh[1] = 0 + (0 - 1) * 1 (sigmoid, alpha 4: 4 * 1/4) = -1.
        def dv_dh(h):
            return (
                1.0
                - h
                * surrogate_grad("sigmoid", None, torch.tensor(h - 1.0, dtype=torch.float64)).item()
            )

        d2 = dv_dh(0.25)
        expected = torch.tensor([-d2 * dv_dh(0.5), -d2, d2], dtype=torch.float64)
        torch.testing.assert_close(x.grad.flatten(), expected, rtol=1e-12, atol=0)


def test_soft_reset_subtracts_the_threshold_once_per_step():
    """Soft reset does not bring v below threshold for large inputs: one threshold per step."""
    x = torch.tensor([[3.5], [0.0], [0.0]], dtype=torch.float64)
    spikes, v_final = multistep_if(x, v_reset=None, return_state=True, backend="torch")
    assert spikes.flatten().tolist() == [1.0, 1.0, 1.0]
    assert v_final.item() == 0.5


@given(
    x=sequences(lo=-2.0, hi=0.0),
    tau=st.floats(1.1, 8.0),
    decay_input=st.booleans(),
)
@SETTINGS
def test_subthreshold_lif_decays_geometrically(x, tau, decay_input):
    """Without spikes, d v_final / d v_init = (1 - 1/tau)^T exactly as the leak says."""
    v_init = torch.zeros(x.shape[1:], dtype=torch.float64, requires_grad=True)
    spikes, v_final = multistep_lif(
        x, tau, decay_input=decay_input, v_init=v_init, return_state=True, backend="torch"
    )
    assert not spikes.any()
    v_final.sum().backward()
    expected = torch.full_like(v_init, (1.0 - 1.0 / tau) ** x.shape[0])
    torch.testing.assert_close(v_init.grad, expected, rtol=1e-12, atol=0)


@pytest.mark.parametrize("kind", ["lif", "plif", "if"])
def test_modules_are_stateless_and_match_functional(kind):
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(6, 4, 5, generator=gen) + 0.5
    if kind == "lif":
        module = MultiStepLIF(tau=3.0, v_reset=None, backend="torch")
        expected = multistep_lif(x, 3.0, v_reset=None, backend="torch")
    elif kind == "plif":
        module = MultiStepPLIF(init_tau=3.0, surrogate="atan", backend="torch")
        w = torch.tensor(-math.log(2.0))
        expected = multistep_plif(x, w, surrogate="atan", backend="torch")
    else:
        module = MultiStepIF(v_threshold=0.7, detach_reset=False, backend="torch")
        expected = multistep_if(x, 0.7, detach_reset=False, backend="torch")
    first = module(x)
    second = module(x)
    assert torch.equal(first, second)  # no state survives a call
    assert 0 < first.mean() < 1
    assert torch.equal(first, expected)
